"""p2p.runtime.color against an independent implementation: scikit-image's rgb2lab/lab2rgb
(same sRGB matrix and D65 white; skimage rounds the white point to 0.95047/1.08883, which
moves Lab by < 0.01). A round trip through our own two functions would pass even if both
were wrong the same way, so every check here compares with skimage."""

from __future__ import annotations

import numpy as np
import pytest

from p2p.runtime import color

skcolor = pytest.importorskip("skimage.color")


def colours() -> np.ndarray:
    """Random colours plus the corners of the RGB cube and a grey ramp (both branches of
    the sRGB and Lab piecewise functions)."""
    rng = np.random.default_rng(0)
    corners = np.array([[r, g, b] for r in (0, 1) for g in (0, 1) for b in (0, 1)], float)
    ramp = np.repeat(np.linspace(0, 1, 64)[:, None], 3, 1)
    dark = rng.random((200, 3)) * 0.05  # the linear segments near black
    return np.concatenate([rng.random((2000, 3)), corners, ramp, dark])


def test_rgb_to_lab_matches_scikit_image():
    rgb = colours()
    np.testing.assert_allclose(color.rgb_to_lab(rgb), skcolor.rgb2lab(rgb), atol=0.01)


def test_lab_to_rgb_matches_scikit_image_in_gamut():
    lab = skcolor.rgb2lab(colours())
    np.testing.assert_allclose(color.lab_to_rgb(lab), skcolor.lab2rgb(lab), atol=1e-3)


def test_model_scaling_is_the_documented_one():
    lab = np.array([[100.0, 110.0, -110.0], [0.0, 0.0, 0.0], [50.0, 55.0, 22.0]])
    L, ab = color.lab_to_model(lab)
    np.testing.assert_allclose(L[..., 0], [1.0, -1.0, 0.0])
    np.testing.assert_allclose(ab, [[1.0, -1.0], [0.0, 0.0], [0.5, 0.2]])
    np.testing.assert_allclose(color.model_to_lab(L, ab), lab)
