"""``p2p-eval``: how close translated images are to their targets, in numbers.

Conventions (also written into the JSON so a number never travels without its meaning):

- Images are compared as 8-bit RGB (grayscale files are expanded to three equal channels).
- **L1**: mean absolute difference on the [0, 1] scale (pixel / 255), over all pixels and
  channels. (pix2pix's training L1 is on [-1, 1], i.e. twice this number.)
- **PSNR**: 10 log10(255^2 / MSE) in dB over all pixels and channels, capped at
  ``PSNR_CAP`` = 100 dB so identical images give a finite value and means stay finite.
- **SSIM**: Wang et al. 2004 with an 11x11 gaussian window (sigma 1.5), K1 0.01, K2 0.03,
  data range 255, 'valid' windows only; computed per RGB channel and averaged. This equals
  ``skimage.metrics.structural_similarity(p, t, data_range=255, channel_axis=-1,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
- Means are plain averages of the per-image values.

Pairs are matched by relative path; a prediction ``x/1.png`` also matches a target
``x/1.jpg`` (same path, other extension) because translators often change the format.
Targets come from a folder of target images, or (``targets_from``) from the other half of
the side-by-side A|B dataset images the predictions were translated from. Every mismatch
is an error: metrics over a different subset of images are not comparable.
This module is torch-free, like all of ``p2p.runtime``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from .errors import DataError, ImageError, choices
from .files import atomic_write

PSNR_CAP = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
DIRECTIONS = ("AtoB", "BtoA")
MAX_LISTED = 5  # names shown in one error line


# ---------------------------------------------------------------------------- metrics


def l1(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean absolute error of two uint8 images on the [0, 1] scale."""
    return float(np.mean(np.abs(pred.astype(np.float64) - target.astype(np.float64)))) / 255.0


def psnr(pred: np.ndarray, target: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB (peak 255), capped at ``PSNR_CAP``."""
    mse = float(np.mean((pred.astype(np.float64) - target.astype(np.float64)) ** 2))
    if mse == 0.0:
        return PSNR_CAP
    return min(PSNR_CAP, 10.0 * math.log10(255.0 ** 2 / mse))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering over axes 1 and 2 of (K, H, W, C) (the 2-D window is the
    outer product of ``g`` with itself, as MATLAB's fspecial('gaussian') is)."""
    k = len(g)
    x = np.lib.stride_tricks.sliding_window_view(x, k, axis=1) @ g
    return np.lib.stride_tricks.sliding_window_view(x, k, axis=2) @ g


def ssim(pred: np.ndarray, target: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM of two (H, W) or (H, W, C) images, per channel then averaged."""
    if pred.shape != target.shape:
        raise ValueError(f"ssim: shapes differ {pred.shape} vs {target.shape}")
    if pred.ndim == 2:
        pred, target = pred[..., None], target[..., None]
    h, w = pred.shape[:2]
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {w}x{h}")
    x = pred.astype(np.float64)
    y = target.astype(np.float64)
    # One pass over the five local moments: E[x], E[y], E[x^2], E[y^2], E[xy].
    mx, my, mxx, myy, mxy = _filter_valid(np.stack([x, y, x * x, y * y, x * y]),
                                          gaussian_window())
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(smap.mean(axis=(0, 1)).mean())


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


def list_images(root: Path) -> list[Path]:
    found = []
    for p in Path(root).rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS and \
                not any(part.startswith(".") for part in rel.parts):
            found.append(rel)
    return sorted(found, key=lambda r: r.as_posix())


def _listed(names) -> str:
    names = [str(n) for n in names]
    more = f" (and {len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def pair_files(pred_dir: Path, target_dir: Path) -> list[tuple[Path, Path]]:
    """(pred rel path, target rel path) for every prediction; exact relative path first,
    else the one target with the same path and another extension."""
    preds, targets = list_images(pred_dir), list_images(target_dir)
    if not preds:
        raise DataError(f"{pred_dir}: no images ({choices(IMAGE_EXTS)})")
    if not targets:
        raise DataError(f"{target_dir}: no images ({choices(IMAGE_EXTS)})")
    exact = set(targets)
    by_stem: dict[str, list[Path]] = {}
    for t in targets:
        by_stem.setdefault(t.with_suffix("").as_posix(), []).append(t)
    pairs, no_target, ambiguous = [], [], []
    for p in preds:
        if p in exact:
            pairs.append((p, p))
            continue
        cands = by_stem.get(p.with_suffix("").as_posix(), [])
        if len(cands) == 1:
            pairs.append((p, cands[0]))
        elif cands:
            ambiguous.append(f"{p} ({' / '.join(map(str, cands))})")
        else:
            no_target.append(p)
    if ambiguous:
        raise DataError(f"{target_dir}: several targets match {_listed(ambiguous)}")
    if no_target:
        raise DataError(f"{len(no_target)} of {len(preds)} predictions in {pred_dir} have no "
                        f"target in {target_dir}: {_listed(no_target)}")
    uses = Counter(t for _, t in pairs)
    twice = sorted((t for t, k in uses.items() if k > 1), key=lambda t: t.as_posix())
    if twice:
        raise DataError(f"{pred_dir}: several predictions (other extensions?) match one target: "
                        f"{_listed(twice)}")
    used = set(uses)
    missing = [t for t in targets if t not in used]
    if missing:
        raise DataError(f"{len(missing)} of {len(targets)} targets in {target_dir} have no "
                        f"prediction in {pred_dir}: {_listed(missing)}")
    return pairs


def load_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255,) * 4), rgba)
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: cannot decode image: {e}") from None


def load_target(path: Path, half: str | None) -> np.ndarray:
    img = load_rgb(path)
    if half is None:
        return img
    w = img.shape[1]
    if w % 2:
        raise DataError(f"{path}: width {w} is odd, so it is not a side-by-side A|B image")
    return img[:, : w // 2] if half == "left" else img[:, w // 2:]


def _measure(job) -> dict:
    pred_path, target_path, half, resize_pred = job
    p, t = load_rgb(pred_path), load_target(target_path, half)
    if p.shape != t.shape:
        if not resize_pred:
            return {"mismatch": (pred_path, p.shape[1], p.shape[0], t.shape[1], t.shape[0])}
        p = np.asarray(Image.fromarray(p).resize((t.shape[1], t.shape[0]),
                                                 Image.Resampling.BICUBIC))
    return {"width": t.shape[1], "height": t.shape[0],
            "l1": l1(p, t), "psnr": psnr(p, t), "ssim": ssim(p, t)}


# ---------------------------------------------------------------------------- run


def validate(cfg: EvalConfig) -> None:
    if not Path(cfg.pred_dir).is_dir():
        raise DataError(f"{cfg.pred_dir}: no such predictions folder")
    if (cfg.target_dir is None) == (cfg.targets_from is None):
        raise DataError("give exactly one of TARGET_DIR or --targets-from DIR")
    if cfg.targets_from is not None and cfg.direction not in DIRECTIONS:
        raise DataError(f"--targets-from needs --direction {choices(DIRECTIONS)}: which half of "
                        "the A|B images was the input (the target is the other half)")
    if cfg.targets_from is None and cfg.direction is not None:
        raise DataError("--direction only applies with --targets-from")
    src = cfg.target_dir if cfg.target_dir is not None else cfg.targets_from
    if not Path(src).is_dir():
        raise DataError(f"{src}: no such targets folder")


def evaluate(cfg: EvalConfig) -> tuple[dict, list[dict]]:
    """Per-image rows and the summary; writes CSV / JSON only where the config says."""
    validate(cfg)
    pred_dir = Path(cfg.pred_dir)
    tgt_dir = Path(cfg.target_dir if cfg.target_dir is not None else cfg.targets_from)
    # AtoB: input A (left) -> target B (right); BtoA: input B -> target A (left).
    half = None if cfg.targets_from is None else ("right" if cfg.direction == "AtoB" else "left")
    pairs = pair_files(pred_dir, tgt_dir)
    jobs = [(pred_dir / p, tgt_dir / t, half, cfg.resize_pred) for p, t in pairs]
    with ThreadPoolExecutor(max_workers=cfg.workers or os.cpu_count() or 1) as pool:
        # numpy and Pillow release the GIL in the heavy parts; map keeps the pair order.
        results = list(tqdm(pool.map(_measure, jobs), total=len(jobs), desc="eval",
                            unit="img", disable=not cfg.progress))
    mismatched = [r["mismatch"] for r in results if "mismatch" in r]
    if mismatched:
        # Targets exactly twice as wide: the user passed the A|B dataset folder as TARGET_DIR.
        ab = half is None and all(tw == 2 * pw and th == ph for _, pw, ph, tw, th in mismatched)
        hint = ("; TARGET_DIR looks like side-by-side A|B images: use --targets-from DIR "
                "--direction AtoB|BtoA" if ab else "; pass --resize-pred to resize predictions "
                "to the target size")
        listed = _listed(f"{p} {pw}x{ph} vs {tw}x{th}" for p, pw, ph, tw, th in mismatched)
        raise DataError(f"{len(mismatched)} of {len(jobs)} predictions differ in size from their "
                        f"targets (pred vs target): {listed}{hint}")
    rows = [{"pred": p.as_posix(), "target": t.as_posix(), **r}
            for (p, t), r in zip(pairs, results)]
    n = len(rows)
    summary = {
        "count": n,
        "l1": sum(r["l1"] for r in rows) / n,
        "psnr": sum(r["psnr"] for r in rows) / n,
        "ssim": sum(r["ssim"] for r in rows) / n,
        "pred_dir": str(pred_dir),
        "target_dir": str(tgt_dir),
        "target_half": half or "whole",
        "resized_predictions": cfg.resize_pred,
        "conventions": {
            "l1": "mean |pred - target| on [0, 1] (pixel / 255), RGB, all pixels",
            "psnr": f"dB, peak 255, MSE over RGB, capped at {PSNR_CAP:g}",
            "ssim": f"Wang et al. gaussian window {SSIM_WINDOW} sigma {SSIM_SIGMA}, K1 {SSIM_K1} "
                    f"K2 {SSIM_K2}, range 255, per RGB channel then averaged",
            "mean": "average of per-image values",
        },
    }
    if cfg.csv_path is not None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["pred", "target", "width", "height",
                                                 "l1", "psnr", "ssim"], lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "l1": f"{r['l1']:.6f}", "psnr": f"{r['psnr']:.4f}",
                             "ssim": f"{r['ssim']:.6f}"})
        atomic_write(cfg.csv_path, lambda tmp: tmp.write_text(buf.getvalue(), encoding="utf-8", newline=""))
    if cfg.json_path is not None:
        atomic_write(cfg.json_path, lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
    return summary, rows
