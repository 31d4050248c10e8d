"""Images in and out of a model: decode, normalise, split, resize or pad; and the way back.

Pillow + numpy only. ``prepare`` turns a file into the array the model takes (C, H, W in the
metadata's value range) plus what is needed to undo it; ``to_image`` turns the model's output
back into a uint8 image at the input's size (after the split), or at the model's with
``model_size``. Every decoding problem is an ``ImageError`` naming the file and the reason.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from . import color
from .errors import ImageError, one_line
from .metadata import ModelMetadata

SPLITS = ("auto", "left", "right", "none")


def _decodable_extensions() -> frozenset[str]:
    """The formats Pillow opens and decodes by itself: not save-only ones (.pdf), not stubs
    that need a handler registered (.h5, .grib, .wmf, ...), not MPEG (identified, never
    decoded) nor EPS/PS (decoded by an external Ghostscript)."""
    def decodes(fmt: str) -> bool:
        factory = Image.OPEN.get(fmt, (None,))[0]
        stub = isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile)
        return factory is not None and not stub and fmt not in ("MPEG", "EPS")

    return frozenset(e.lower() for e, fmt in Image.registered_extensions().items()
                     if decodes(fmt))


# The one extension rule of every command. What a file holds is decided by decoding it; the
# name only selects the candidates.
IMAGE_EXTS = _decodable_extensions()
SHOWN_EXTS = ".png, .jpg, .jpeg, .webp, .bmp, .tif, ... (any format Pillow reads)"
FORMATS = ("png", "jpg", "webp", "tif")
_DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# Pillow warns between its limit and twice it; ``open_rgb`` turns anything over the limit into
# an ImageError itself, so the warning would only repeat that, once per file.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Pillow warns (once per file, on stderr) about each corrupt EXIF entry it skips; ``orientation``
# reads the one tag it needs and treats the rest as absent, so the warnings would be noise.
warnings.filterwarnings("ignore", category=UserWarning, module="PIL.TiffImagePlugin")


def max_pixels() -> int:
    """The decompression-bomb limit: Pillow's default unless $P2P_MAX_IMAGE_PIXELS says."""
    env = os.environ.get("P2P_MAX_IMAGE_PIXELS")
    try:
        limit = int(env) if env else _DEFAULT_MAX_PIXELS
    except ValueError:
        limit = 0
    if limit < 1:  # there is no "off": a bigger number allows bigger images
        raise ImageError(f"P2P_MAX_IMAGE_PIXELS={env!r} is not a positive integer")
    return limit


def _flatten(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Transparency is composited on white (what viewers show)."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale: Pillow's convert("L") clips at 255 instead of scaling.
        a = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8))
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8))
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def is_image_name(name: str | os.PathLike) -> bool:
    """Whether a file name is a candidate image: a Pillow-readable extension, not hidden
    (p2p's own temp files are hidden)."""
    name = Path(name).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTS


# EXIF Orientation -> the transpose that makes the image upright (EXIF 2.32, tag 0x0112).
_ORIENT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
           6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def orientation(im: Image.Image) -> int:
    """The EXIF Orientation (1-8), 1 when absent or unreadable. Only this one tag is read:
    Pillow's ``exif_transpose`` re-serialises the whole EXIF block and fails on any other
    tag stored with the wrong type, and a broken EXIF block must not cost the pixels."""
    try:
        value = im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - struct.error, AttributeError, ... on mangled EXIF
        return 1
    return value if isinstance(value, int) and value in _ORIENT else 1


def upright(im: Image.Image) -> Image.Image:
    """``im`` turned by its EXIF orientation (without touching the rest of its EXIF)."""
    o = orientation(im)
    return im.transpose(_ORIENT[o]) if o in _ORIENT else im


def check_regular_file(path) -> None:
    """An ImageError unless ``path`` is (a link to) a regular file. A FIFO named x.png would
    block the reader forever and a device could stream without end, so neither is opened."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        link = " (a dangling symbolic link)" if os.path.islink(path) else ""
        raise ImageError(f"{path}: no such file{link}") from None
    except OSError as e:  # ELOOP (a symbolic link loop), EACCES on a folder, ...
        raise ImageError(f"{path}: cannot read: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        mode = st.st_mode
        what = ("a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device")
        raise ImageError(f"{path}: not a regular file ({what}); not opened")
    if st.st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")


def open_rgb(path: Path) -> Image.Image:
    """Decode ``path`` (a file name or a binary file object) to an upright RGB image (first
    frame of animations)."""
    if isinstance(path, (str, os.PathLike)):
        check_regular_file(path)
    limit = max_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit  # allowed more: Pillow's own check must not refuse it
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > limit:
                raise ImageError(f"{path}: {w}x{h} = {w * h} pixels is over the decompression-"
                                 f"bomb limit {limit} (raise P2P_MAX_IMAGE_PIXELS to allow it)")
            im.seek(0)
            im.load()
            return _flatten(upright(im))
    except ImageError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own check, at twice its limit
        n = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageError(f"{path}: {n.group(1) if n else 'too many'} pixels is over the "
                         f"decompression-bomb limit {limit} (raise P2P_MAX_IMAGE_PIXELS to "
                         "allow it)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read") from None
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except PermissionError:
        raise ImageError(f"{path}: cannot read: Permission denied") from None
    except MemoryError:
        raise ImageError(f"{path}: does not fit in memory") from None
    except Exception as e:  # noqa: BLE001 - whatever a decoder plug-in raises on a bad file
        raise ImageError(f"{path}: cannot decode: {one_line(e)}") from None


def choose_half(size: tuple[int, int], split: str, meta: ModelMetadata) -> str | None:
    """Which half of the image feeds the model: 'left', 'right' or None (the whole image).
    auto: only an exactly 2:1 image is a pix2pix A|B pair, and the model's direction names
    its input half; a colorization (Lab) model never splits: it takes whole photos, and a
    2:1 photo is a panorama, not a pair. Callers say so once per run (``split_note``)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {'|'.join(SPLITS)}")
    if split == "auto":
        w, h = size
        return meta.input_half if w == 2 * h and meta.color_space != "lab" else None
    return None if split == "none" else split


def split_note(prep: "Prepared", keep_whole: str = "--split none") -> str:
    """What an automatic split did, in one line for the log (said once per run)."""
    w, h = prep.size
    return (f"treating {2 * w}x{h} images as A|B pairs: using the {prep.half} half; "
            f"{keep_whole} to keep the whole image")


def crop_half(img: Image.Image, half: str | None) -> Image.Image:
    if half is None:
        return img
    w, h = img.size
    return img.crop((0, 0, w // 2, h) if half == "left" else (w - w // 2, 0, w, h))


@dataclass(frozen=True)
class Prepared:
    array: np.ndarray  # (C, H, W) float32, what the model sees (padded for dynamic models)
    size: tuple[int, int]  # (width, height) after the split: the default output size
    half: str | None  # the half taken from a side-by-side image, None for the whole image
    lightness: np.ndarray | None = None  # Lab models: L (0..100) at ``size``, kept at full res


def prepare(path: Path, meta: ModelMetadata, split: str = "auto") -> Prepared:
    img = open_rgb(path)
    half = choose_half(img.size, split, meta)
    img = crop_half(img, half)
    try:
        return _to_array(img, half, meta)
    except MemoryError:
        raise ImageError(f"{path}: {img.size[0]}x{img.size[1]} does not fit in memory") from None


def prepare_image(img: Image.Image, meta: ModelMetadata, split: str = "auto") -> Prepared:
    """``prepare`` for an already decoded RGB image (a video frame): the same split, resize
    and value range, so a frame translates exactly as the same picture in a file does."""
    half = choose_half(img.size, split, meta)
    return _to_array(crop_half(img, half), half, meta)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB, transparency composited on white: what ``open_rgb`` does to
    a file's first frame, for the other frames of an animation."""
    return _flatten(img)


def _to_array(orig: Image.Image, half: str | None, meta: ModelMetadata) -> Prepared:
    img = orig
    if not meta.dynamic_size and img.size != (meta.image_size,) * 2:
        # pix2pix resizes (bicubic) to the training size at test time, aspect not kept.
        img = img.resize((meta.image_size,) * 2, Image.BICUBIC)
    lightness = None
    if meta.color_space == "lab":
        # The model sees L of the model-sized image; the full-resolution L is kept for the
        # way back, so only the colour (ab) is ever upsampled.
        lightness = _model_L(orig)
        x = (lightness if img is orig else _model_L(img))[None]
    else:
        if meta.in_channels == 1:
            img = img.convert("L")
        a = np.asarray(img)  # uint8 (H, W[, C])
        a = a[:, :, None] if a.ndim == 2 else a
        lo, hi = meta.value_range
        # Two passes straight into the (C, H, W) float32 result: at 100+ images/s on two
        # cores every copy of the image counts (was four: cast, scale, shift, transpose).
        x = np.empty((a.shape[2], a.shape[0], a.shape[1]), np.float32)
        np.multiply(a.transpose(2, 0, 1), np.float32((hi - lo) / 255.0), out=x)
        x += np.float32(lo)
    if meta.dynamic_size:
        x = pad_to_multiple(x, meta.size_multiple)
    return Prepared(np.ascontiguousarray(x, np.float32), orig.size, half, lightness)


def _model_L(img: Image.Image) -> np.ndarray:
    """(H, W) L scaled to the model's [-1, 1], by ``p2p.runtime.color``'s one convention."""
    L, _ = color.lab_to_model(color.rgb_to_lab(np.asarray(img, np.float32) / 255.0))
    return L[..., 0].astype(np.float32)


def pad_to_multiple(x: np.ndarray, multiple: int) -> np.ndarray:
    """Pad (C, H, W) at the bottom and right up to multiples; reflect (no hard edge for the
    convolutions to see), edge when the image is too small to reflect. Cropped after."""
    _, h, w = x.shape
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return x
    mode = "reflect" if ph < h and pw < w else "edge"
    return np.pad(x, ((0, 0), (0, ph), (0, pw)), mode=mode)


def _resize_float(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) float -> (size[1], size[0], C), bicubic per channel (Pillow's mode F)."""
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(a[..., i], np.float32))
                                .resize(size, Image.BICUBIC)) for i in range(a.shape[-1])], -1)


def to_image(y: np.ndarray, prep: Prepared, meta: ModelMetadata,
             model_size: bool = False) -> Image.Image:
    """The model's (C, H, W) output -> uint8 image at the input's size (after the split), or
    at the model's size with ``model_size`` (fixed-size models; dynamic ones are always cropped
    back to the input's size, since the model ran at that size)."""
    y = np.asarray(y, np.float32)
    w, h = prep.size
    if meta.dynamic_size:
        y = y[:, :h, :w]  # the padding is not part of the image
    target = (meta.image_size,) * 2 if model_size and not meta.dynamic_size else prep.size
    if meta.color_space == "lab":
        ab = y.transpose(1, 2, 0)
        if ab.shape[1::-1] != target:
            ab = _resize_float(ab, target)
        L = prep.lightness if target == prep.size else prep.array[0]
        rgb = color.lab_to_rgb(color.model_to_lab(L[..., None], ab))
        return Image.fromarray(np.rint(rgb * 255.0).astype(np.uint8))
    lo, hi = meta.value_range
    # The same float32 arithmetic as (y - lo) * k -> rint -> clip -> uint8, in place on one
    # (H, W[, 3]) buffer: the transpose happens in the first pass instead of as a copy after.
    planes = y[0] if len(y) == 1 else y[:3].transpose(1, 2, 0)
    v = np.subtract(planes, np.float32(lo), order="C", dtype=np.float32)
    v *= np.float32(255.0 / (hi - lo))
    np.rint(v, out=v)
    np.clip(v, 0, 255, out=v)
    img = Image.fromarray(v.astype(np.uint8))
    return img if img.size == target else img.resize(target, Image.BICUBIC)


def encode(img: Image.Image, fmt: str) -> bytes:
    """Bytes of ``img`` in ``fmt``, tuned so encoding never holds up inference: PNG (lossless)
    through ``png_bytes`` for 8-bit RGB and greyscale, Pillow at compress_level 1 with zlib's
    Huffman-only strategy otherwise; JPEG at quality 95, lossy WebP at quality 90."""
    buf = io.BytesIO()
    if fmt == "png" and img.mode in _PNG_COLOR_TYPES:
        return png_bytes(np.asarray(img))
    if fmt == "png":
        img.save(buf, "PNG", compress_level=1, compress_type=zlib.Z_HUFFMAN_ONLY)
    elif fmt == "jpg":
        img.save(buf, "JPEG", quality=95)
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=90, method=2)
    elif fmt == "tif":  # lossless; georeferenced outputs are written by runtime/raster.py
        img.save(buf, "TIFF", compression="tiff_adobe_deflate")
    else:
        raise ValueError(f"format {fmt!r} is not one of {'|'.join(FORMATS)}")
    return buf.getvalue()


_PNG_COLOR_TYPES = {"L": 0, "RGB": 2}  # PNG colour types of 8-bit greyscale and truecolour


def _zlib_rle(data) -> bytes:
    z = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return z.compress(data) + z.flush()


try:  # ISA-L's deflate (package isal): the same zlib stream format, ~3.5x faster than zlib's
    # level 1 RLE on a 256x256 facade after the Up filter (0.44 vs 1.54 ms, files within 1%:
    # measured side by side on the 2-core AMX Xeon, BENCHMARKS.md). Optional: zlib otherwise.
    from isal import isal_zlib

    def _deflate(data) -> bytes:
        return isal_zlib.compress(data, 1)
except ImportError:  # pragma: no cover - a platform without an isal wheel
    _deflate = _zlib_rle


def png_bytes(a: np.ndarray) -> bytes:
    """A lossless PNG of an 8-bit (H, W) or (H, W, 3) array: every row with the Up filter
    (each byte minus the one above it, computed by numpy in one pass) and zlib level 1 with
    the RLE strategy. Why not Pillow's encoder: at p2p-translate's INT8 rate (100+ images/s
    on two cores) PNG encoding was the largest cost after the model; on a 256x256 facade this
    is ~5x faster than Pillow's level 1 Huffman-only (measured side by side on a loaded
    2-core Xeon: 4.3 vs 22.8 ms) for files ~18% larger (125 vs 106 kB): after the Up filter
    a photo's bytes are small numbers that Huffman/RLE coding packs well, and LZ77 matching
    finds little. The deflate is ISA-L's where the ``isal`` package is installed (a
    dependency of p2p), zlib's level 1 RLE otherwise; both write a standard zlib stream.
    Format: PNG specification (ISO/IEC 15948) sections 5, 9.2 and 11.2."""
    h, w = a.shape[:2]
    channels = 1 if a.ndim == 2 else a.shape[2]
    rows = np.ascontiguousarray(a, np.uint8).reshape(h, w * channels)
    raw = np.empty((h, w * channels + 1), np.uint8)
    raw[:, 0] = 2  # filter type Up; row 0 sees an all-zero row above it
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # uint8 wraps: arithmetic mod 256
    idat = _deflate(raw.data)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0 if channels == 1 else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


# --- arrays in and out of the model (tiles, raster windows) -----------------------------------
# Interim uint8-only versions (branch tiles); the bit-depth work replaces their bodies and
# keeps these names and shapes. Every window or tile conversion goes through these two.

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, what Pillow's "L" uses


def normalize(a: np.ndarray, meta: ModelMetadata) -> np.ndarray:
    """(H, W, C) uint8 pixels -> (meta.in_channels, H, W) float32 in ``meta.value_range``
    (0 -> lo, 255 -> hi, linear). Bands: C == in_channels as they are; 1 band repeated into
    3; 3 bands to 1 by BT.601 luma; more bands than the model takes: the first ones (a 4th
    raster band is alpha or near-infrared, neither of which an RGB model reads).
    Raises ImageError for any other dtype or band count."""
    if a.ndim == 2:
        a = a[:, :, None]
    if a.dtype != np.uint8:
        raise ImageError(f"{a.dtype} pixels: only 8-bit images are read here")
    c, want = a.shape[2], meta.in_channels
    if c == 3 and want == 1:
        a = np.rint(a.astype(np.float32) @ _LUMA)[:, :, None].astype(np.uint8)
    elif c == 1 and want == 3:
        a = np.broadcast_to(a, a.shape[:2] + (3,))
    elif c > want:
        a = a[:, :, :want]
    elif c != want:
        raise ImageError(f"{c} bands, and the model takes {want}")
    lo, hi = meta.value_range
    x = np.empty((want,) + a.shape[:2], np.float32)
    np.multiply(a.transpose(2, 0, 1), np.float32((hi - lo) / 255.0), out=x)
    x += np.float32(lo)
    return x


def denormalize(y: np.ndarray, meta: ModelMetadata) -> np.ndarray:
    """The model's (C, H, W) float output in ``meta.value_range`` -> (H, W, C) uint8:
    the inverse of ``normalize`` (lo -> 0, hi -> 255), rounded and clipped."""
    lo, hi = meta.value_range
    v = np.subtract(np.asarray(y, np.float32).transpose(1, 2, 0), np.float32(lo),
                    dtype=np.float32)
    v *= np.float32(255.0 / (hi - lo))
    np.rint(v, out=v)
    np.clip(v, 0, 255, out=v)
    return v.astype(np.uint8)

