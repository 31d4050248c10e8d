"""``p2p-eval``: L1, PSNR and SSIM of translated images against their targets."""

from __future__ import annotations

from pathlib import Path

import click

from p2p.cli.common import CONTEXT, handle_errors
from p2p.runtime.evaluate import DIRECTIONS, PSNR_CAP, EvalConfig, evaluate

DIR = click.Path(path_type=Path, file_okay=False)
FILE = click.Path(path_type=Path, dir_okay=False)


@click.command(context_settings=CONTEXT)
@click.argument("pred_dir", type=DIR)
@click.argument("target_dir", type=DIR, required=False)
@click.option("--targets-from", type=DIR,
              help="Folder of the side-by-side A|B images the predictions were made from; "
                   "the target is the half that was not the input.")
@click.option("--direction", type=click.Choice(DIRECTIONS),
              help="With --targets-from: AtoB (target = right half) or BtoA (left half).")
@click.option("--model", "-m", type=click.Path(path_type=Path),
              help="With --targets-from: the model file, export or run folder, or pretrained "
                   "name that made the predictions; the direction is the one it was trained "
                   "for (instead of --direction).")
@click.option("--glob", "pattern", default=None,
              help="Score only the predictions matching this pattern (file name or relative "
                   "path, e.g. 'sub/*' or '1*.png'); the other targets are not needed.")
@click.option("--csv", "csv_path", type=FILE, help="Write per-image metrics here.")
@click.option("--json", "json_path", type=FILE, help="Write the means (and conventions) here.")
@click.option("--resize-pred", is_flag=True,
              help="Resize predictions to the target size instead of failing on a mismatch.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="Threads (0 = one per CPU).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@handle_errors
def main(pred_dir, target_dir, targets_from, direction, model, pattern, csv_path, json_path,
         resize_pred, workers, quiet):
    """Compare PRED_DIR with TARGET_DIR (or --targets-from) image by image.

    Pairs match by relative path (x/1.png also matches x/1.jpg). Images are read at their
    depth: L1 is on [0, 1], PSNR in dB with the depth's peak (255 for 8-bit, 65535 for
    16-bit, 1 for float; capped at 100), SSIM is Wang et al.'s (gaussian 11, sigma 1.5) per
    channel. Nothing is written unless --csv or --json is given.
    """
    cfg = EvalConfig(pred_dir=pred_dir, target_dir=target_dir, targets_from=targets_from,
                     direction=direction, csv_path=csv_path, json_path=json_path,
                     resize_pred=resize_pred, workers=workers, progress=not quiet,
                     glob=pattern, model=model)
    summary, _ = evaluate(cfg)
    if model is not None and direction is None and targets_from is not None:
        click.echo(f"direction {summary['direction']} (from --model {model})", err=True)
    for note in summary["notes"]:
        click.echo(f"note: {note}", err=True)
    cap = " (cap)" if summary["psnr"] >= PSNR_CAP else ""
    if summary["ssim"] is None:
        ssim = "SSIM undefined (every image is under 11x11)"
    elif summary["ssim_count"] < summary["count"]:
        ssim = f"SSIM {summary['ssim']:.4f} (over {summary['ssim_count']} images)"
    else:
        ssim = f"SSIM {summary['ssim']:.4f}"
    click.echo(f"{summary['count']} images  L1 {summary['l1']:.4f}  "
               f"PSNR {summary['psnr']:.2f} dB{cap}  {ssim}")
    for label, path in (("per-image CSV", csv_path), ("summary JSON", json_path)):
        if path is not None:
            click.echo(f"{label}: {path}")
