"""``p2p-eval``: how close translated images are to their targets, in numbers.

Conventions (also written into the JSON so a number never travels without its meaning):

- Images are decoded by ``images.decode``, the decoder of every command (EXIF orientation,
  colour profile to sRGB, alpha on white), at full precision: 8-bit, 16-bit or float (0..1),
  1, 3 or N bands. Two 8-bit images are compared as they are; any other pair on one scale,
  each image divided by its depth's peak (255, 65535, 1), which gives the same numbers for
  8-bit images. Greyscale against RGB compares the grey repeated in 3 bands.
- **L1** on [0, 1] (pix2pix's training L1 is on [-1, 1], i.e. twice this number), **PSNR**
  (peak: the depth's, 255 for 8-bit, 65535 for 16-bit, 1 for float; capped at 100 dB) and
  **SSIM** as defined in ``p2p.runtime.metrics``.
- SSIM is undefined for an image under its 11x11 window: that pair's SSIM is left empty,
  said in one line naming the file, and left out of the SSIM mean (``ssim_count``).
- Means are plain averages of the per-image values.

Pairs are matched by ``listing.pair_by_name``: relative path; a prediction ``x/1.jpg.png``
matches a target ``x/1.jpg`` (p2p-translate's name when ``1.png`` lies beside it), and a
prediction ``x/1.png`` also matches a target ``x/1.jpg`` (same path, other extension).
Targets come from a folder of target images, or (``targets_from``) from the other half of
the side-by-side A|B dataset images the predictions were translated from. Every mismatch
is an error: metrics over a different subset of images are not comparable.
This module is torch-free, like all of ``p2p.runtime``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .errors import DataError, P2PError, choices, one_line
from .files import atomic_write
from .images import SHOWN_EXTS, ab_pair_problem, bands_text, crop_half, decode, match_bands, \
    resize
from .listing import list_images, listed, matches, pair_by_name, raise_problems
from .locate import pick_model
from .modelfile import read_metadata
from .metrics import PSNR_CAP, SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WINDOW, SSIMUndefined, l1, \
    psnr, ssim
DIRECTIONS = ("AtoB", "BtoA")


# ---------------------------------------------------------------------------- pairing


@dataclass(frozen=True)
class EvalConfig:
    pred_dir: Path
    target_dir: Path | None = None  # a folder of target images ...
    targets_from: Path | None = None  # ... or the A|B dataset images the predictions came from
    direction: str | None = None  # with targets_from: AtoB -> target is the right half (B)
    csv_path: Path | None = None  # per-image rows; nothing is written unless asked
    json_path: Path | None = None  # the means and the conventions
    resize_pred: bool = False  # resize predictions to the target size (bicubic) instead of failing
    workers: int = 0  # 0: os.cpu_count()
    progress: bool = True
    glob: str | None = None  # score only the predictions matching it (listing.matches)
    model: Path | None = None  # with targets_from: the direction is this model's (or run's)


def pair_files(pred_dir: Path, target_dir: Path,
               pattern: str | None = None) -> list[tuple[Path, Path]]:
    """(pred rel path, target rel path) for every prediction, by ``listing.pair_by_name``;
    any prediction or target left unpaired is a DataError (metrics over a different subset
    of images are not comparable). With ``pattern`` only the predictions it matches are
    scored, and the targets of the others are not needed."""
    preds, targets = list_images(pred_dir), list_images(target_dir)
    if pattern is not None:
        preds = [p for p in preds if matches(p, pattern)]
    if not preds:
        what = f"no images matching --glob {pattern!r}" if pattern else "no images"
        raise DataError(f"{pred_dir}: {what} ({SHOWN_EXTS})")
    if not targets:
        raise DataError(f"{target_dir}: no images ({SHOWN_EXTS})")
    m = pair_by_name(preds, targets)
    if pattern is not None:
        m.only_b = []  # a subset: the other targets belong to predictions not scored
    m.require_complete(pred_dir, target_dir, "prediction", "target")
    return m.pairs


def load(path: Path) -> np.ndarray:
    """(H, W, C) uint8 | uint16 | float32 by the decoder of every command; ImageError
    naming the file."""
    return decode(path)


def comparable(p: np.ndarray, t: np.ndarray, pred_path: Path, target_path=None
               ) -> tuple[np.ndarray, np.ndarray, float]:
    """(pred, target, data_range) on one scale: 8-bit pairs as they are (range 255), others
    divided by their depth's peak (range 1); grey repeated to match RGB. DataError when the
    band counts cannot be compared."""
    if p.shape[2] != t.shape[2]:
        if {p.shape[2], t.shape[2]} != {1, 3}:
            raise DataError(f"{pred_path}: {bands_text(p.shape[2], pred_path)}, its target "
                            f"{bands_text(t.shape[2], target_path)}")
        p, t = match_bands(p, 3), match_bands(t, 3)
    if p.dtype == t.dtype == np.uint8:
        return p, t, 255.0
    unit = [a.astype(np.float64) / (1.0 if a.dtype == np.float32 else np.iinfo(a.dtype).max)
            for a in (p, t)]
    return unit[0], unit[1], 1.0


def load_target(path: Path, half: str | None) -> np.ndarray:
    """(H, W, C) array at the file's depth: the image, or its ``half`` of an A|B pair
    (``images.crop_half``); a target that is not exactly 2:1 is a DataError (p2p-translate
    splits only those)."""
    img = load(path)
    if half is None:
        return img
    problem = ab_pair_problem(path, (img.shape[1], img.shape[0]))
    if problem:
        raise DataError(problem)
    return crop_half(img, half)


def _measure(job) -> dict:
    pred_path, target_path, half, resize_pred = job
    unusable = []  # ImageError, or an A|B target of odd width: named with the others
    try:
        p = load(pred_path)
    except P2PError as e:
        unusable.append(str(e))
    try:
        t = load_target(target_path, half)
    except P2PError as e:
        unusable.append(str(e))
    if unusable:
        return {"unusable": unusable}
    if p.shape[:2] != t.shape[:2]:
        if not resize_pred:
            return {"mismatch": (pred_path, p.shape[1], p.shape[0], t.shape[1], t.shape[0])}
        p = resize(p, (t.shape[1], t.shape[0]))
    try:
        p, t, peak = comparable(p, t, pred_path, target_path)
    except DataError as e:
        return {"unusable": [str(e)]}
    try:
        s = ssim(p, t, data_range=peak)
    except SSIMUndefined as e:
        s, note = None, f"{pred_path}: {e} for this pair (left out of the SSIM mean)"
    else:
        note = None
    return {"width": t.shape[1], "height": t.shape[0],
            "l1": l1(p, t, peak), "psnr": psnr(p, t, peak), "ssim": s, "note": note}


# ---------------------------------------------------------------------------- run


def validate(cfg: EvalConfig) -> None:
    if not Path(cfg.pred_dir).is_dir():
        raise DataError(f"{cfg.pred_dir}: no such predictions folder")
    if (cfg.target_dir is None) == (cfg.targets_from is None):
        raise DataError("give exactly one of TARGET_DIR or --targets-from DIR")
    if cfg.targets_from is not None and cfg.direction not in DIRECTIONS:
        raise DataError(f"--targets-from needs --direction {choices(DIRECTIONS)} or --model "
                        "(the model or run folder that made the predictions): which half of "
                        "the A|B images was the input (the target is the other half)")
    if cfg.targets_from is None and (cfg.direction is not None or cfg.model is not None):
        raise DataError("--direction and --model only apply with --targets-from")
    src = cfg.target_dir if cfg.target_dir is not None else cfg.targets_from
    if not Path(src).is_dir():
        raise DataError(f"{src}: no such targets folder")
    if cfg.target_dir is not None and Path(src).resolve() == Path(cfg.pred_dir).resolve():
        raise DataError(f"{src}: the predictions folder is also TARGET_DIR; every image would "
                        "score perfectly")


def model_direction(model: Path | str) -> tuple[str, str]:
    """(direction, where it was read) of a run folder (its config.json), or of a model file,
    export folder or pretrained name (its metadata, ``locate.pick_model``'s FP32 choice).
    A colorization model has no input half: DataError."""
    run_config = Path(model) / "config.json"
    if run_config.is_file():
        try:
            task = json.loads(run_config.read_text())["task"]
            direction, space = task["direction"], task.get("color_space", "rgb")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{run_config}: not a p2p run config ({one_line(e)})") from None
        where = str(run_config)
    else:
        path, _ = pick_model(model, precision="fp32")
        meta = read_metadata(path)
        direction, space, where = meta.direction, meta.color_space, str(path)
    if space == "lab":
        raise DataError(f"{where}: a colorization model takes whole photos; its targets are "
                        "the photos themselves: pass TARGET_DIR instead of --targets-from")
    return direction, where


def resolve_direction(cfg: EvalConfig) -> EvalConfig:
    """``cfg`` with the direction of ``cfg.model`` filled in; a --direction that contradicts
    the model's is a DataError (its targets would be the input half)."""
    if cfg.model is None or cfg.targets_from is None:
        return cfg
    known, where = model_direction(cfg.model)
    if cfg.direction is not None and cfg.direction != known:
        raise DataError(f"--direction {cfg.direction} contradicts {where}, which translates "
                        f"{known}; drop --direction")
    return replace(cfg, direction=known)


def evaluate(cfg: EvalConfig) -> tuple[dict, list[dict]]:
    """Per-image rows and the summary; writes CSV / JSON only where the config says."""
    cfg = resolve_direction(cfg)
    validate(cfg)
    pred_dir = Path(cfg.pred_dir)
    tgt_dir = Path(cfg.target_dir if cfg.target_dir is not None else cfg.targets_from)
    # AtoB: input A (left) -> target B (right); BtoA: input B -> target A (left).
    half = None if cfg.targets_from is None else ("right" if cfg.direction == "AtoB" else "left")
    pairs = pair_files(pred_dir, tgt_dir, cfg.glob)
    jobs = [(pred_dir / p, tgt_dir / t, half, cfg.resize_pred) for p, t in pairs]
    with ThreadPoolExecutor(max_workers=cfg.workers or os.cpu_count() or 1) as pool:
        # numpy and Pillow release the GIL in the heavy parts; map keeps the pair order.
        results = list(tqdm(pool.map(_measure, jobs), total=len(jobs), desc="eval",
                            unit="img", disable=not cfg.progress))
    # Every unreadable image is named (not only the first): a subset's metrics are not
    # comparable, so none are given.
    # dict.fromkeys: a file that is both a prediction and a target is named once.
    raise_problems(list(dict.fromkeys(u for r in results for u in r.get("unusable", ()))),
                   2 * len(jobs))
    mismatched = [r["mismatch"] for r in results if "mismatch" in r]
    if mismatched:
        # Targets exactly twice as wide: the user passed the A|B dataset folder as TARGET_DIR.
        ab = half is None and all(tw == 2 * pw and th == ph for _, pw, ph, tw, th in mismatched)
        hint = ("; TARGET_DIR looks like side-by-side A|B images: use --targets-from DIR "
                "--direction AtoB|BtoA" if ab else "; pass --resize-pred to resize predictions "
                "to the target size")
        names = listed(f"{p} {pw}x{ph} vs {tw}x{th}" for p, pw, ph, tw, th in mismatched)
        raise DataError(f"{len(mismatched)} of {len(jobs)} predictions differ in size from their "
                        f"targets (pred vs target): {names}{hint}")
    notes = [r.pop("note") for r in results]
    rows = [{"pred": p.as_posix(), "target": t.as_posix(), **r}
            for (p, t), r in zip(pairs, results)]
    n = len(rows)
    defined = [r["ssim"] for r in rows if r["ssim"] is not None]
    summary = {
        "count": n,
        "l1": sum(r["l1"] for r in rows) / n,
        "psnr": sum(r["psnr"] for r in rows) / n,
        "ssim": sum(defined) / len(defined) if defined else None,
        "ssim_count": len(defined),
        "notes": [x for x in notes if x],
        "pred_dir": str(pred_dir),
        "target_dir": str(tgt_dir),
        "target_half": half or "whole",
        "direction": cfg.direction,
        "glob": cfg.glob,
        "resized_predictions": cfg.resize_pred,
        "conventions": {
            "l1": "mean |pred - target| on [0, 1] (pixel / peak), all bands, all pixels",
            "psnr": f"dB, peak of the depth (255 8-bit, 65535 16-bit, 1 float), MSE over "
                    f"all bands, capped at {PSNR_CAP:g}",
            "ssim": f"Wang et al. gaussian window {SSIM_WINDOW} sigma {SSIM_SIGMA}, K1 {SSIM_K1} "
                    f"K2 {SSIM_K2}, range the depth's peak, per band then averaged",
            "depth": "images at full precision; pairs of other than two 8-bit images "
                     "compared on [0, 1] (each divided by its depth's peak)",
            "mean": "average of per-image values (SSIM: of the pairs where it is defined)",
        },
    }
    if cfg.csv_path is not None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["pred", "target", "width", "height",
                                                 "l1", "psnr", "ssim"], lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "l1": f"{r['l1']:.6f}", "psnr": f"{r['psnr']:.4f}",
                             "ssim": "" if r["ssim"] is None else f"{r['ssim']:.6f}"})
        atomic_write(cfg.csv_path, lambda tmp: tmp.write_text(buf.getvalue(), encoding="utf-8", newline=""))
    if cfg.json_path is not None:
        atomic_write(cfg.json_path, lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
    return summary, rows
