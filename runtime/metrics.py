"""Image similarity numbers: L1, PSNR and SSIM, the one implementation of each in p2p.

numpy only. ``p2p-eval`` scores images of any depth with them (peak by depth); the exporter
and the benchmarks use ``psnr`` on model outputs in [-1, 1] (``data_range=2``, no cap).

- **L1**: mean absolute difference on the [0, 1] scale (pixel / data_range).
- **PSNR**: 10 log10(data_range^2 / MSE) in dB, capped at ``cap`` (p2p-eval: 100 dB, so
  identical images give a finite value and means stay finite). NaN when either array holds
  a NaN or an infinity: every check is written ``not psnr >= bound``, so NaN fails it (the
  cap must never turn a broken output into a perfect score).
- **SSIM**: Wang et al. 2004 with an 11x11 gaussian window (sigma 1.5), K1 0.01, K2 0.03,
  'valid' windows only, per channel then averaged; equals
  ``skimage.metrics.structural_similarity(p, t, data_range=255, channel_axis=-1,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``. It is undefined for
  images smaller than the window (``SSIMUndefined``).
"""

from __future__ import annotations

import math

import numpy as np

PSNR_CAP = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


class SSIMUndefined(ValueError):
    """The image is smaller than the SSIM window: no window fits, so there is no value."""


def l1(pred: np.ndarray, target: np.ndarray, data_range: float = 255.0) -> float:
    """Mean absolute error on the [0, 1] scale of two images whose values span
    ``data_range`` (255 for uint8 images, 65535 for uint16, 1 for floats in 0..1)."""
    return (float(np.mean(np.abs(pred.astype(np.float64) - target.astype(np.float64))))
            / data_range)


def psnr(pred: np.ndarray, target: np.ndarray, data_range: float = 255.0,
         cap: float = PSNR_CAP) -> float:
    """Peak signal-to-noise ratio in dB of two same-shaped arrays whose values span
    ``data_range`` (255 for uint8 images, 2 for [-1, 1] model outputs), at most ``cap``
    (``math.inf``: no cap); NaN when the error is not finite (a NaN or Inf in either)."""
    mse = float(np.mean((pred.astype(np.float64) - target.astype(np.float64)) ** 2))
    if not math.isfinite(mse):  # min(cap, nan) would be the cap: a NaN output scoring best
        return math.nan
    if mse == 0.0:
        return cap
    return min(cap, 10.0 * math.log10(data_range ** 2 / mse))


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
    """Mean SSIM of two (H, W) or (H, W, C) images, per channel then averaged. Raises
    ValueError for different shapes, SSIMUndefined below the 11x11 window."""
    if pred.shape != target.shape:
        raise ValueError(f"ssim: shapes differ {pred.shape} vs {target.shape}")
    if pred.ndim == 2:
        pred, target = pred[..., None], target[..., None]
    h, w = pred.shape[:2]
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise SSIMUndefined(f"{w}x{h} is smaller than SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} "
                            "window: SSIM is undefined")
    x = pred.astype(np.float64)
    y = target.astype(np.float64)
    # One pass over the five local moments: E[x], E[y], E[x^2], E[y^2], E[xy].
    mx, my, mxx, myy, mxy = _filter_valid(np.stack([x, y, x * x, y * y, x * y]),
                                          gaussian_window())
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(smap.mean(axis=(0, 1)).mean())
