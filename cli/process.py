"""``p2p-process``: dataset tools (resize, combine, split, grayscale, edges, blank)."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from p2p.cli.common import CONTEXT, handle_errors
from p2p.trainer.process import LABEL_MAP_COLOURS, RESAMPLES, ProcessConfig, run

DIR = click.Path(path_type=Path, file_okay=False)


def common(fn):
    """The flags every operation shares."""
    for deco in reversed([
        click.option("--output", required=True, type=DIR,
                     help="Folder to write into; must not be, contain or lie inside an input."),
        click.option("--workers", default=0, show_default=True,
                     help="Parallel threads (0 = one per CPU)."),
        click.option("--overwrite", is_flag=True, help="Redo outputs that already exist."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    ]):
        fn = deco(fn)
    return fn


def input_option(fn):
    return click.option("--input", "input_dir", required=True, type=DIR,
                        help="Folder of images (searched recursively).")(fn)


def _run(ctx: click.Context, **fields) -> None:
    quiet = fields.pop("quiet")
    cfg = ProcessConfig(progress=not quiet, **fields)
    report = run(cfg)
    hint = " (already there; --overwrite redoes them)" if report.skipped else ""
    click.echo(f"{cfg.op}: {report.written} written, {report.skipped} skipped{hint}, "
               f"{len(report.failed)} failed -> {cfg.output}")
    if report.nearest:
        click.echo(f"  {len(report.nearest)} label map(s) resized nearest-neighbour (at most "
                   f"{LABEL_MAP_COLOURS} colours in flat regions; --resample bicubic to blend)",
                   err=True)
    for name, reason in report.failed:
        click.echo(f"  failed: {name}: {reason}", err=True)
    if report.failed:
        ctx.exit(1)


@click.group(context_settings=CONTEXT)
def main():
    """Turn folders of your own images into pix2pix training pairs.

    Outputs mirror the input's relative paths as PNG (TIFF inputs stay TIFF, at their depth
    and band count); existing outputs are skipped when these inputs and settings made them
    (an output made from others is refused: --overwrite replaces it), bad files are listed
    at the end (exit code 1), and the input is never written to.
    """


@main.command()
@input_option
@common
@click.option("--size", default=256, show_default=True, help="Side of the square output.")
@click.option("--pad", is_flag=True,
              help="Pad to square with white instead of centre-cropping.")
@click.option("--resample", type=click.Choice(RESAMPLES), default="auto", show_default=True,
              help=f"auto: nearest-neighbour for label maps (at most {LABEL_MAP_COLOURS} "
                   "distinct colours, changing in steps between flat regions: no blended "
                   "classes), bicubic for photos (greyscale ones too).")
@click.pass_context
@handle_errors
def resize(ctx, input_dir, output, workers, overwrite, quiet, size, pad, resample):
    """Make images square (centre crop, or white padding with --pad) and SIZE x SIZE."""
    _run(ctx, op="resize", input=input_dir, output=output, workers=workers,
         overwrite=overwrite, quiet=quiet, size=size, pad=pad, resample=resample)


@main.command()
@click.option("--a", "a_dir", required=True, type=DIR, help="Folder of A images (left half).")
@click.option("--b", "b_dir", required=True, type=DIR,
              help="Folder of B images with the same names (right half).")
@common
@click.pass_context
@handle_errors
def combine(ctx, a_dir, b_dir, output, workers, overwrite, quiet):
    """Put same-named A and B images side by side (A|B), the layout p2p-train reads."""
    _run(ctx, op="combine", a=a_dir, b=b_dir, output=output, workers=workers,
         overwrite=overwrite, quiet=quiet)


@main.command()
@input_option
@common
@click.option("--ratios", default="0.8,0.1,0.1", show_default=True,
              help="train,val[,test] fractions summing to 1.")
@click.option("--seed", default=0, show_default=True, help="Shuffle seed (same seed, same split).")
@click.option("--halves", is_flag=True,
              help="Instead: cut each A|B image (exactly 2:1) into OUTPUT/A/ and OUTPUT/B/ "
                   "(PNG, same relative paths; the inverse of combine).")
@click.pass_context
@handle_errors
def split(ctx, input_dir, output, workers, overwrite, quiet, ratios, seed, halves):
    """Copy images into train/ val/ [test/] subfolders, deterministically; or, with
    --halves, cut A|B images into A/ and B/."""
    if halves and any(ctx.get_parameter_source(p) != ParameterSource.DEFAULT
                      for p in ("ratios", "seed")):
        raise click.UsageError("--halves cuts every image into A/ and B/; --ratios and --seed "
                               "only apply to a train/val/test split (run split twice)")
    try:
        parsed = tuple(float(x) for x in ratios.split(","))
    except ValueError:
        raise click.BadParameter(f"{ratios!r}: expected numbers like 0.8,0.1,0.1",
                                 param_hint="--ratios") from None
    _run(ctx, op="split", input=input_dir, output=output, workers=workers,
         overwrite=overwrite, quiet=quiet, ratios=parsed, seed=seed, halves=halves)


def _simple(op: str, doc: str):
    @click.pass_context
    @handle_errors
    def command(ctx, input_dir, output, workers, overwrite, quiet):
        _run(ctx, op=op, input=input_dir, output=output, workers=workers,
             overwrite=overwrite, quiet=quiet)

    command.__doc__ = doc
    main.command(name=op)(input_option(common(command)))


_simple("grayscale", "Convert images to one-channel grayscale.")
_simple("edges", "Black-on-white Canny edge maps (automatic thresholds), for edges->photo pairs.")
_simple("blank", "White out the centre (half width x half height), for inpainting pairs.")
