"""Images in and out of a model: decode, normalise, split, resize or pad; and the way back.

Pillow + numpy (tifffile for the TIFFs Pillow cannot read, extra ``tiff``). ``decode`` reads
any file at full precision ((H, W, C) uint8 | uint16 | float32); ``normalize`` /
``denormalize`` are the one conversion between such arrays and the model's (C, H, W) value
range; ``prepare`` turns a file into the array the model takes plus what is needed to undo
it; ``to_array`` turns the model's output back into an image array at the model's output
depth, at the input's size (after the split), or at the model's with ``model_size``;
``encode`` (``encoding``) writes it. Every decoding problem is an ``ImageError`` naming the
file and the reason.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from . import color, pixels
from .errors import ImageError, one_line
from .metadata import ModelMetadata
from .pixels import bands_text, match_bands, resize  # noqa: F401 - part of this module's interface
from .encoding import (FORMATS, _deflate, _zlib_rle, default_format, encode,  # noqa: F401
                       format_problem, output_kind, png_bytes, tiff_bytes)  # re-exported

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


def _is_tiff(path) -> bool:
    try:
        if hasattr(path, "read"):
            path.seek(0)
            head = path.read(4)
            path.seek(0)
        else:
            with open(path, "rb") as f:
                head = f.read(4)
    except OSError:
        return False
    return pixels.is_tiff(head)


def _select(a: np.ndarray, select) -> np.ndarray:
    box = select(a.shape[1], a.shape[0]) if select else None
    return a[box[1]:box[3], box[0]:box[2]] if box else a


def _reopen(path):
    if hasattr(path, "seek"):
        path.seek(0)
    return Image.open(path)


def decode(path, select=None) -> np.ndarray:
    """Decode ``path`` (a file name or a binary file object) at full precision: (H, W, C)
    uint8, uint16 or float32 (values 0..1), C = 1 (greyscale), 3 (RGB) or a multi-band
    TIFF's band count. Upright by the EXIF/TIFF orientation, the first frame, an embedded
    colour profile converted to sRGB, alpha composited on white. Raises ImageError naming
    the file: unreadable, over the decompression-bomb limit, float values outside 0..1 or
    NaN/Inf, unsupported sample types. TIFFs Pillow would truncate (16-bit or float colour,
    extra bands) need tifffile (``p2p[tiff]``). ``select(width, height)``, when given, returns
    the (left, top, right, bottom) box to keep of the upright image, or None: cropping before
    the conversion to an array copies only what is kept (``prepare``'s A|B half)."""
    if isinstance(path, (str, os.PathLike)):
        check_regular_file(path)
    limit = max_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit  # allowed more: Pillow's own check must not refuse it
    try:
        try:
            im = Image.open(path)
        except UnidentifiedImageError:
            if _is_tiff(path):  # float colour or 5+ bands: Pillow has no mode for them
                return _select(pixels.tiff(path, path, limit), select)
            raise
        with im:
            w, h = im.size
            if w * h > limit:
                raise ImageError(f"{path}: {w}x{h} = {w * h} pixels is over the decompression-"
                                 f"bomb limit {limit} (raise P2P_MAX_IMAGE_PIXELS to allow it)")
            if pixels.needs_tifffile(im):
                return _select(pixels.tiff(path, path, limit), select)
            im.seek(0)
            if pixels.png16_rawmode(im):
                return _select(pixels.orient(pixels.png16(lambda: _reopen(path), im, path),
                                             orientation(im)), select)
            im.load()
            im = upright(im)
            box = select(*im.size) if select else None
            return pixels.from_pillow(im.crop(box) if box else im, path)
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


def open_rgb(path) -> Image.Image:
    """``decode`` seen as an 8-bit RGB Pillow image (galleries, thumbnails): deeper samples
    scaled to 8 bits, greyscale repeated; an image of other than 1 or 3 bands is an
    ImageError naming the file."""
    a = decode(path)
    if a.shape[2] not in (1, 3):
        raise ImageError(f"{path}: {bands_text(a.shape[2], path)}; an RGB view needs 1 or 3")
    a = pixels.to_uint8(a)
    return Image.fromarray(a[..., 0]).convert("RGB") if a.shape[2] == 1 else Image.fromarray(a)

def choose_half(size: tuple[int, int], split: str, meta: ModelMetadata) -> str | None:
    """Which half of the image feeds the model: 'left', 'right' or None (the whole image).
    auto: only an exactly 2:1 image is a pix2pix A|B pair, and the model's direction names
    its input half; a colorization (Lab) model never splits: it takes whole photos, and a
    2:1 photo is a panorama, not a pair. Callers say so once per run (``split_note``)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {'|'.join(SPLITS)}")
    if split == "auto":
        return meta.input_half if is_ab_pair(size) and meta.color_space != "lab" else None
    return None if split == "none" else split


def is_ab_pair(size: tuple[int, int]) -> bool:
    """Whether an image of ``size`` (width, height) is a pix2pix A|B pair: exactly 2:1, two
    square halves side by side. The one rule of every command: p2p-translate's auto split,
    p2p-train's and p2p-eval's A|B folders, p2p-process split --halves."""
    w, h = size
    return h > 0 and w == 2 * h


def ab_pair_problem(path, size: tuple[int, int]) -> str | None:
    """Why an image of ``size`` cannot be an A|B pair (one line naming ``path``), or None."""
    w, h = size
    if is_ab_pair(size):
        return None
    if w % 2:
        return f"{path}: width {w} is odd, so it is not an A|B side-by-side pair"
    return (f"{path}: {w}x{h} is not 2:1, so it is not an A|B side-by-side pair (two square "
            "halves; translate splits only exact 2:1 images)")


def split_note(prep: "Prepared", keep_whole: str = "--split none") -> str:
    """What an automatic split did, in one line for the log (said once per run)."""
    w, h = prep.size
    return (f"treating {2 * w}x{h} images as A|B pairs: using the {prep.half} half; "
            f"{keep_whole} to keep the whole image")


def half_box(w: int, h: int, half: str) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of one half of a w x h side-by-side image."""
    return (0, 0, w // 2, h) if half == "left" else (w - w // 2, 0, w, h)


def crop_half(img, half: str | None):
    """The ``half`` of a side-by-side image: an (H, W, C) array (a view) or a Pillow image."""
    if half is None:
        return img
    if isinstance(img, Image.Image):
        return img.crop(half_box(*img.size, half))
    left, _, right, _ = half_box(img.shape[1], img.shape[0], half)
    return img[:, left:right]


# --- the value conversion, written once ----------------------------------------------------

def data_range(depth: str, meta: ModelMetadata, side: str = "input") -> tuple[float, float]:
    """The data values that map to the ends of the model's ``value_range``: what the metadata
    records for the model's own data depth (``input_range``/``output_range``), the depth's
    natural range (0..255, 0..65535, 0..1) for other depths (an 8-bit photo into a 16-bit
    model means the same brightness)."""
    own = meta.input_depth if side == "input" else meta.output_depth
    if depth == own:
        return meta.input_range if side == "input" else meta.output_range
    return pixels.NATURAL_RANGE[depth]


def normalize(a: np.ndarray, meta: ModelMetadata, side: str = "input",
              where="image") -> np.ndarray:
    """(H, W, C) (or (H, W): one band) uint8 | uint16 | float32 data -> (C', H, W) float32 in ``meta.value_range``:
    the data range ``data_range`` gives maps linearly onto the value range (8-bit RGB into
    [-1, 1]: x / 127.5 - 1, the paper's transforms.Normalize((0.5,)*3, (0.5,)*3)). Bands
    are matched to the model's (``match_bands``; ``side`` 'input': in_channels, 'output':
    out_channels, for training targets). Lab models: 'input' gives L, 'output' ab, by
    ``color``'s convention. Raises ImageError (naming ``where``) on a band mismatch."""
    if a.ndim == 2:  # one band given as (H, W)
        a = a[:, :, None]
    if meta.color_space == "lab":
        lab = color.rgb_to_lab(pixels.to_unit(match_bands(a, 3, where)))
        L, ab = color.lab_to_model(lab)
        return np.ascontiguousarray((L if side == "input" else ab).transpose(2, 0, 1),
                                    np.float32)
    a = match_bands(a, meta.in_channels if side == "input" else meta.out_channels, where)
    lo, hi = data_range(a.dtype.name, meta, side)
    vlo, vhi = meta.value_range
    d = np.float32((hi - lo) / (vhi - vlo))  # 127.5 for 8-bit data into [-1, 1]: exact
    # Two passes straight into the (C, H, W) float32 result: at 100+ images/s on two
    # cores every copy of the image counts (was four: cast, scale, shift, transpose).
    # Dividing by d (not multiplying by 1/d) is bit-exact with x / 127.5 - 1.
    x = np.empty((a.shape[2], a.shape[0], a.shape[1]), np.float32)
    np.divide(a.transpose(2, 0, 1), d, out=x)
    x += np.float32(vlo - lo / float(d))
    return x


def denormalize(y: np.ndarray, meta: ModelMetadata) -> np.ndarray:
    """The model's (C, H, W) output in ``meta.value_range`` -> (H, W, C) at the model's output
    depth (``meta.output_depth``: uint8, uint16 or float32), the inverse of ``normalize``
    on ``meta.output_range``: rounded and clipped for integers, clipped to the range for
    floats. Not for Lab models (their RGB needs the input's L: ``to_array``)."""
    y = np.asarray(y, np.float32)
    lo, hi = meta.output_range
    vlo, vhi = meta.value_range
    # The same float32 arithmetic as (y - lo) * k -> rint -> clip, in place on one (H, W, C)
    # buffer: the transpose happens in the first pass instead of as a copy after.
    v = np.subtract(y.transpose(1, 2, 0), np.float32(vlo), order="C", dtype=np.float32)
    v *= np.float32((hi - lo) / (vhi - vlo))
    if lo:
        v += np.float32(lo)
    if meta.output_depth == "float32":
        return np.clip(v, lo, hi, out=v)
    np.rint(v, out=v)
    np.clip(v, 0, pixels.NATURAL_RANGE[meta.output_depth][1], out=v)
    return v.astype(meta.output_depth)


@dataclass(frozen=True)
class Prepared:
    array: np.ndarray  # (C, H, W) float32, what the model sees (padded for dynamic models)
    size: tuple[int, int]  # (width, height) after the split: the default output size
    half: str | None  # the half taken from a side-by-side image, None for the whole image
    lightness: np.ndarray | None = None  # Lab models: L (0..100) at ``size``, kept at full res


def prepare(path: Path, meta: ModelMetadata, split: str = "auto") -> Prepared:
    """A file -> what the model takes: decoded (``decode``), the A|B half chosen, resized to
    the model's size (fixed-size models), ``normalize``d, padded (dynamic models)."""
    chosen = []

    def select(w: int, h: int):
        chosen.append(choose_half((w, h), split, meta))
        return None if chosen[0] is None else half_box(w, h, chosen[0])

    a = decode(path, select)
    half = chosen[0]
    try:
        return _to_array(a, half, meta, path)
    except MemoryError:
        raise ImageError(f"{path}: {a.shape[1]}x{a.shape[0]} does not fit in memory") from None


def prepare_image(img, meta: ModelMetadata, split: str = "auto",
                  where="frame") -> Prepared:
    """``prepare`` for an already decoded frame (a video frame: an (H, W, C) array, or a
    Pillow image read at full depth by ``pixels.from_pillow``): the same split, resize and
    value range, so a frame translates exactly as the same picture in a file does."""
    a = pixels.from_pillow(img, where) if isinstance(img, Image.Image) else img
    half = choose_half((a.shape[1], a.shape[0]), split, meta)
    return _to_array(crop_half(a, half), half, meta, where)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, transparency composited on white: what ``decode`` does
    to a file's first frame, for the other frames of an animation."""
    a = pixels.from_pillow(img, "frame")
    return Image.fromarray(pixels.match_bands(pixels.to_uint8(a), 3))


def _to_array(orig: np.ndarray, half: str | None, meta: ModelMetadata, where) -> Prepared:
    a = orig
    size = (orig.shape[1], orig.shape[0])
    if not meta.dynamic_size and size != (meta.image_size,) * 2:
        # pix2pix resizes (bicubic) to the training size at test time, aspect not kept.
        a = resize(a, (meta.image_size,) * 2)
    lightness = None
    if meta.color_space == "lab":
        # The model sees L of the model-sized image; the full-resolution L is kept for the
        # way back, so only the colour (ab) is ever upsampled.
        lightness = normalize(orig, meta, "input", where)[0]
        x = lightness[None] if a is orig else normalize(a, meta, "input", where)
    else:
        x = normalize(a, meta, "input", where)
    if meta.dynamic_size:
        x = pad_to_multiple(x, meta.size_multiple)
    return Prepared(np.ascontiguousarray(x, np.float32), size, half, lightness)


def pad_to_multiple(x: np.ndarray, multiple: int) -> np.ndarray:
    """Pad (C, H, W) at the bottom and right up to multiples; reflect (no hard edge for the
    convolutions to see), edge when the image is too small to reflect. Cropped after."""
    _, h, w = x.shape
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return x
    mode = "reflect" if ph < h and pw < w else "edge"
    return np.pad(x, ((0, 0), (0, ph), (0, pw)), mode=mode)


def to_array(y: np.ndarray, prep: Prepared, meta: ModelMetadata,
             model_size: bool = False) -> np.ndarray:
    """The model's (C, H, W) output -> (H, W, C) at the model's output depth
    (``denormalize``), at the input's size (after the split), or at the model's size with
    ``model_size`` (fixed-size models; dynamic ones are always cropped back to the input's
    size, since the model ran at that size). Lab models give RGB."""
    y = np.asarray(y, np.float32)
    w, h = prep.size
    if meta.dynamic_size:
        y = y[:, :h, :w]  # the padding is not part of the image
    target = (meta.image_size,) * 2 if model_size and not meta.dynamic_size else prep.size
    if meta.color_space == "lab":
        ab = y.transpose(1, 2, 0)
        if ab.shape[1::-1] != target:
            ab = pixels.resize_float(ab, target)
        L = prep.lightness if target == prep.size else prep.array[0]
        rgb = color.lab_to_rgb(color.model_to_lab(L[..., None], ab))
        return pixels.from_unit(rgb, meta.output_depth)
    out = denormalize(y, meta)
    return out if out.shape[1::-1] == target else resize(out, target)


def to_image(y: np.ndarray, prep: Prepared, meta: ModelMetadata,
             model_size: bool = False) -> Image.Image:
    """``to_array`` as a Pillow image, for 8-bit greyscale or RGB outputs (ValueError for
    others: 16-bit, float and N-band outputs have no Pillow mode; use ``to_array``)."""
    a = to_array(y, prep, meta, model_size)
    if a.dtype != np.uint8 or a.shape[2] not in (1, 3):
        raise ValueError(f"to_image: a {a.dtype} {a.shape[2]}-band output is not an 8-bit "
                         "image; use to_array")
    return Image.fromarray(a[..., 0] if a.shape[2] == 1 else a)
