"""sRGB <-> CIE Lab (D65) in numpy, and the [-1, 1] scaling colorization models use.

Shared by the trainer (RGB -> Lab targets) and the runtime (model ab + input L -> RGB), so
both sides agree on one convention:
    L in [0, 100]      -> L / 50 - 1        (model input, 1 channel)
    a, b in [-110, 110] -> a / 110, b / 110 (model output, 2 channels)
"""

from __future__ import annotations

import numpy as np

_M = np.array([[0.412453, 0.357580, 0.180423],
               [0.212671, 0.715160, 0.072169],
               [0.019334, 0.119193, 0.950227]], dtype=np.float64)
_M_INV = np.linalg.inv(_M)
_WHITE = _M.sum(axis=1)  # D65 white point (Xn, Yn, Zn) of this matrix
AB_SCALE = 110.0


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in [0, 1] -> (..., 3) Lab (L in [0, 100])."""
    rgb = np.asarray(rgb, dtype=np.float64)
    lin = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = lin @ _M.T / _WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    L = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """(..., 3) Lab -> (..., 3) RGB in [0, 1] (clipped)."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f > 0.206893, f ** 3, (f - 16.0 / 116.0) / 7.787) * _WHITE
    lin = xyz @ _M_INV.T
    lin = np.clip(lin, 0.0, None)
    rgb = np.where(lin > 0.0031308, 1.055 * lin ** (1 / 2.4) - 0.055, 12.92 * lin)
    return np.clip(rgb, 0.0, 1.0)


def lab_to_model(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lab (..., 3) -> (L scaled to [-1, 1] (..., 1), ab scaled to [-1, 1] (..., 2))."""
    return lab[..., :1] / 50.0 - 1.0, lab[..., 1:] / AB_SCALE


def model_to_lab(L: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """Inverse of ``lab_to_model``: channel-last L (..., 1) and ab (..., 2) in [-1, 1]."""
    return np.concatenate([(L + 1.0) * 50.0, ab * AB_SCALE], axis=-1)
