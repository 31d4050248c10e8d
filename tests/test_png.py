"""runtime/images.png_bytes: the PNG writer p2p-translate and p2p-serve use is lossless."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from p2p.runtime.images import encode, png_bytes


@pytest.mark.parametrize("shape", [(1, 1), (1, 7, 3), (5, 1, 3), (33, 17), (64, 48, 3)])
def test_png_round_trips_exactly(shape):
    a = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    with Image.open(io.BytesIO(png_bytes(a))) as im:
        im.load()
        assert im.format == "PNG" and im.mode == ("L" if len(shape) == 2 else "RGB")
        assert np.array_equal(np.asarray(im), a)


def test_encode_uses_it_for_rgb_and_l_and_pillow_otherwise():
    rgb = Image.fromarray(np.arange(48 * 3, dtype=np.uint8).reshape(4, 12, 3))
    assert encode(rgb, "png") == png_bytes(np.asarray(rgb))
    rgba = rgb.convert("RGBA")
    with Image.open(io.BytesIO(encode(rgba, "png"))) as im:  # Pillow's encoder, still exact
        assert np.array_equal(np.asarray(im), np.asarray(rgba))


def test_both_deflates_write_the_same_pixels():
    """ISA-L (the fast path) and zlib (the fallback) are interchangeable inside IDAT."""
    from p2p.runtime import encoding as images

    a = np.random.default_rng(3).integers(0, 256, (40, 24, 3), dtype=np.uint8)
    fallback = images._zlib_rle
    for deflate in (images._deflate, fallback):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(images, "_deflate", deflate)
            data = images.png_bytes(a)
        with Image.open(io.BytesIO(data)) as im:
            assert np.array_equal(np.asarray(im), a)
