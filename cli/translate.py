"""``p2p-translate``: translate images and folders with an exported p2p model.

Exit status: 0 when every image was translated (or already there), 1 when any failed or the
run could not start (bad model, provider that cannot run here), 2 for usage errors.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path

import click

from p2p.cli.common import CONTEXT, engine_options, handle_errors, model_option, requires
from p2p.runtime.locate import pick_model
from p2p.runtime.images import FORMATS, SPLITS
from p2p.runtime.pipeline import TranslateConfig, translate


@contextlib.contextmanager
def _term_as_interrupt():
    """SIGTERM (a plain ``kill``, a service manager stopping the run) and SIGHUP (a closed
    terminal) as Ctrl-C: the run unwinds, its sinks remove their temp files, and the
    command exits 1 ("Aborted!") instead of dying at once with the temps left for the next
    run to remove. Further TERM/HUP signals are ignored while it cleans up."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    signals = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    interrupted = []

    def interrupt(signum, frame):
        for s in signals:  # a second kill must not cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
        interrupted.append(signum)
        raise KeyboardInterrupt

    before = {s: signal.signal(s, interrupt) for s in signals}
    try:
        yield
    finally:
        if not interrupted:  # once killed, stay deaf until exit: a second kill arriving
            for s, handler in before.items():  # after the clean-up ("Aborted!") would
                signal.signal(s, handler)  # otherwise end the process by the signal


@click.command(context_settings=CONTEXT)
@click.argument("inputs", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@model_option
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder; the input tree is mirrored under it "
                   "[default: <folder>-translated beside each input folder, or beside the folder of "
                   "the input files; <name>-translated beside a file given alone].")
@engine_options
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Output format [default: png (8- or 16-bit, as the model's data); tif "
                   "for float or N-band models]. tif holds any depth and band count, keeps a "
                   "GeoTIFF's CRS and geotransform (p2p[geo]) and, with --tile, streams to disk.")
@click.option("--split", type=click.Choice(SPLITS), default="auto", show_default=True,
              help="Half of side-by-side images to translate; auto: the model's input half "
                   "of exactly 2:1 (pix2pix dataset) images, else the whole image.")
@click.option("--tile", is_flag=True,
              help="Run at the model's own scale in overlapping tiles of its training size, "
                   "blended back seamlessly: any image size (TIFFs stream window by window "
                   "with p2p[geo]).")
@click.option("--tile-overlap", type=click.IntRange(min=0), default=None, metavar="PX",
              help="Pixels neighbouring tiles share [default: a quarter of the tile, "
                   "64 at 256].")
@click.option("--model-size", is_flag=True,
              help="Keep the model's output size instead of resizing to the input's.")
@click.option("--glob", "pattern", default=None,
              help="Only files in folders matching this pattern (e.g. '*.jpg') "
                   "[default: every image type Pillow reads].")
@click.option("--html", is_flag=True, help="Write index.html: input | output | target.")
@click.option("--overwrite", is_flag=True,
              help="Redo outputs that already exist (without it, those this input and model "
                   "made are skipped, others refused).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Decode and encode threads (each) [default: min(4, CPUs)].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--video-codec", default="auto", show_default=True,
              help="Encoder of video outputs (an FFmpeg name: libx264, libvpx-vp9, ffv1, ...); "
                   "auto: H.264 (VP9 for .webm).")
@click.option("--crf", type=click.IntRange(min=0, max=63), default=None,
              help="Constant quality of video outputs, lower is better [default: 18 for "
                   "H.264, the codec's visually lossless setting].")
@handle_errors
def main(inputs, model, output, provider, batch_size, threads, precision, fmt, split,
         tile, tile_overlap, model_size, pattern, html, overwrite, workers, quiet, video_codec,
         crf):
    """Translate INPUT images, videos and folders (recursive) with a p2p model.

    Videos (.mp4 .mov .mkv .webm .avi, animated GIF/WebP/PNG) become videos of the same frame
    rate, frame count and timestamps, their audio copied unchanged (needs p2p[video])."""
    if tile_overlap is not None and not tile:
        raise click.UsageError("--tile-overlap needs --tile")
    if tile and model_size:
        raise click.UsageError("--model-size and --tile exclude each other (tiles keep the "
                               "input's size)")
    if len(inputs) > 1 and output is None:
        click.echo("note: several inputs and no --output: each folder goes to "
                   "<folder>-translated, files to their folder's <folder>-translated, "
                   "beside it", err=True)
    model, rule = pick_model(model, precision=precision, provider=provider)
    if rule:
        click.echo(rule, err=True)
    cfg = TranslateConfig(inputs=tuple(inputs), model=model, output=output, provider=provider,
                          batch_size=batch_size, threads=threads, precision=precision,
                          fmt=fmt, split=split, model_size=model_size, glob=pattern, html=html, overwrite=overwrite,
                          workers=workers, progress=not quiet, tile=tile,
                          tile_overlap=tile_overlap, video_codec=video_codec, crf=crf)
    with requires("p2p-translate"), _term_as_interrupt():  # PyAV: only for videos
        summary = translate(cfg, log=lambda msg: click.echo(msg, err=True))
    for line in summary.lines():
        click.echo(line)
    sys.exit(1 if summary.failed else 0)


if __name__ == "__main__":
    main()
