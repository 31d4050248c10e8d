"""The image operations of ``p2p-process`` (pure functions on (H, W, C) arrays at their own
depth): square resize (crop or white padding; bicubic for photos, nearest for label maps),
grayscale, Canny edges, a blanked centre, and A|B side by side. ``p2p.trainer.process``
plans and runs them over folders. Torch-free; OpenCV is imported only by ``edges``.
"""

from __future__ import annotations

import numpy as np

from p2p.runtime import images, pixels
from p2p.runtime.errors import DataError, P2PError
from p2p.runtime.metadata import DATA_DEPTHS

# auto: an image of at most this many distinct colours whose changes are region boundaries
# is a label map (or an edge map, a drawing): bicubic would blend its classes into colours
# no label has, so it is resized nearest-neighbour. Colour photos have thousands of colours
# (a JPEG label map too: compression noise); a greyscale photo has at most 256 levels at 8
# bits, so the count alone cannot tell it apart. Its texture does: of a photo's pixels that
# differ from a neighbour, most differ from the neighbours on both sides (facades val photos
# in greyscale: 75-90% along a row or column, also with 78% of the width white), while a
# label map's changes are one-sided steps between flat regions (their label maps, cleanly
# coloured: 18-56%; edge maps ~30%).
LABEL_MAP_COLOURS = 256
LABEL_MAP_TEXTURE = 0.65  # below this share of two-sided changes: regions, not texture
CANNY_SIGMA = 0.33  # the median rule: thresholds at (1 -/+ sigma) * median intensity


def is_label_map(a: np.ndarray) -> bool:
    """A label map, not a photo: at most ``LABEL_MAP_COLOURS`` distinct colours in the
    (H, W, C) image, and its changes are steps between flat regions: of the pixels that
    differ from a neighbour along a row (a column), fewer than ``LABEL_MAP_TEXTURE`` (the
    mean of the two axes) differ from both neighbours, as a photo's texture does."""
    pixels_ = np.ascontiguousarray(a).reshape(-1, a.shape[2])
    as_one = pixels_.view(np.dtype((np.void, pixels_.dtype.itemsize * pixels_.shape[1])))
    if len(np.unique(as_one)) > LABEL_MAP_COLOURS:
        return False
    shares = []
    for axis in (0, 1):
        mid = np.moveaxis(a, axis, 0)
        before = np.any(mid[1:-1] != mid[:-2], axis=-1)
        after = np.any(mid[1:-1] != mid[2:], axis=-1)
        changed = int((before | after).sum())
        shares.append(int((before & after).sum()) / changed if changed else 0.0)
    return sum(shares) / 2 < LABEL_MAP_TEXTURE


def _nearest(a: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) -> (size, size, C) nearest-neighbour at pixel centres (Pillow's NEAREST):
    no colour that was not there (label maps stay label maps)."""
    h, w = a.shape[:2]
    rows = np.minimum(((np.arange(size) + 0.5) * h / size).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * w / size).astype(np.intp), w - 1)
    return a[rows][:, cols]


def resize(a: np.ndarray, size: int, pad: bool = False, resample: str = "bicubic") -> np.ndarray:
    """Square (H, W, C) ``a`` (centre crop, or white padding) at ``size``, same depth;
    ``resample`` is bicubic or nearest (``plan`` decides auto per image with
    ``is_label_map``)."""
    h, w = a.shape[:2]
    if pad:
        # White, not black: the classic sets (facades, edges2*) have light backgrounds and a
        # black border would read as a strong edge the generator has to learn.
        side = max(w, h)
        canvas = np.full((side, side, a.shape[2]), pixels.white(a.dtype), a.dtype)
        top, left = (side - h) // 2, (side - w) // 2
        canvas[top:top + h, left:left + w] = a
        a = canvas
    else:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        a = a[top:top + side, left:left + side]
    if a.shape[:2] == (size, size):
        return a
    return _nearest(a, size) if resample == "nearest" else images.resize(a, (size, size))


def grayscale(a: np.ndarray, op: str = "grayscale") -> np.ndarray:
    """One band: Pillow's ITU-R 601-2 luma (``images.match_bands``), at the image's depth.
    DataError for other band counts, naming ``op`` (the p2p-process operation asked for)."""
    if a.shape[2] not in (1, 3):
        raise DataError(f"{a.shape[2]} bands: {op} takes greyscale or RGB images")
    return images.match_bands(a, 1)


def _cv2():
    try:
        import cv2
    except ImportError:
        raise P2PError("edges needs OpenCV: pip install 'p2p[process]' "
                       "(opencv-python-headless)") from None
    return cv2


def edges(a: np.ndarray) -> np.ndarray:
    """Canny with automatic thresholds, black edges on white like pix2pix's edges2* sets
    (8-bit, one band, whatever the source's depth).

    pix2pix used HED edges (a network not available offline); Canny on a lightly blurred
    grayscale is the usual stand-in. Thresholds follow the median rule: an image's median
    intensity v sets low=(1-0.33)v and high=(1+0.33)v, so dark and bright photos both give
    sensible maps without per-image tuning.
    """
    cv2 = _cv2()
    gray = grayscale(pixels.to_uint8(a), "edges")[..., 0]
    blurred = cv2.GaussianBlur(gray, (3, 3), 0)
    v = float(np.median(blurred))
    low = int(max(0, (1.0 - CANNY_SIGMA) * v))
    high = int(min(255, (1.0 + CANNY_SIGMA) * v))
    return (255 - cv2.Canny(blurred, low, high))[..., None]


def blank(a: np.ndarray) -> np.ndarray:
    """White out the centre (half width x half height), as pix2pix-tensorflow's ``blank``."""
    h, w = a.shape[:2]
    out = a.copy()
    out[h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = pixels.white(a.dtype)
    return out


def combine(a: np.ndarray, b: np.ndarray, a_name: str, b_name: str) -> np.ndarray:
    """A|B side by side. Greyscale beside RGB becomes RGB; two depths become the deeper."""
    if a.shape[:2] != b.shape[:2]:
        raise DataError(f"size mismatch: A {a_name} is {a.shape[1]}x{a.shape[0]}, "
                        f"B {b_name} is {b.shape[1]}x{b.shape[0]}")
    if a.shape[2] != b.shape[2]:
        if {a.shape[2], b.shape[2]} != {1, 3}:
            raise DataError(f"band mismatch: A {a_name} has {images.bands_text(a.shape[2], a_name)}"
                            f", B {b_name} {images.bands_text(b.shape[2], b_name)}")
        a, b = images.match_bands(a, 3), images.match_bands(b, 3)
    if a.dtype != b.dtype:
        deeper = max(a.dtype.name, b.dtype.name, key=DATA_DEPTHS.index)
        a, b = (pixels.from_unit(pixels.to_unit(x), deeper) for x in (a, b))
    return np.concatenate([a, b], axis=1)


PER_IMAGE = {"grayscale": grayscale, "edges": edges, "blank": blank}
