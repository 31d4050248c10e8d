"""Pixels at full precision: what ``images.decode`` does after Pillow has opened a file.

Internal to ``images`` (the one decoder of every command): the array conversions of each
source, on (H, W, C) numpy arrays of dtype uint8, uint16 or float32 (values 0..1):

- Pillow modes -> arrays (greyscale stays 1 band; alpha composited on white, what viewers
  show), with an embedded ICC profile converted to sRGB (LittleCMS through ``ImageCms``,
  relative colorimetric, as browsers do) so that the model, ``p2p-eval`` and every viewer
  see the same colours;
- 16-bit colour PNGs, which Pillow truncates to 8 bits: decoded twice by Pillow's own zlib
  decoder, once keeping each sample's high byte and once its low byte (``_png16``);
- TIFFs Pillow cannot read or would truncate (16-bit or float colour, more than 4 bands,
  extra samples that are bands, not alpha) through tifffile (the ``p2p[tiff]`` extra).

Beside them, the array helpers ``images`` re-exports: ``match_bands`` (grey <-> RGB) and
``resize`` (bicubic at any depth). Every problem is an ``ImageError`` naming the file
(``where``).
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageCms

from .errors import ImageError, one_line
from .metadata import NATURAL_RANGE  # the one table of depths and their ranges
TIFF_EXTRA = "tiff"  # the pyproject extra that installs tifffile

_SRGB = ImageCms.createProfile("sRGB")
_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def white(dtype) -> float:
    """The value of white at ``dtype``: 255, 65535 or 1.0."""
    return NATURAL_RANGE[np.dtype(dtype).name][1]


def on_white(rgb: np.ndarray, alpha: np.ndarray, premultiplied: bool = False) -> np.ndarray:
    """(H, W, C) colour over white by (H, W, 1) ``alpha`` (same dtype, white = opaque)."""
    top = white(rgb.dtype)
    a = alpha.astype(np.float32) / np.float32(top)
    c = rgb.astype(np.float32)
    out = c + (1 - a) * top if premultiplied else c * a + (1 - a) * top
    if rgb.dtype == np.float32:
        return np.clip(out, 0, 1).astype(np.float32)
    return np.clip(np.rint(out), 0, top).astype(rgb.dtype)


def check_sample_type(dtype, where) -> None:
    """An ImageError naming the file unless ``dtype`` is one p2p reads: uint8, uint16 or a
    float type (checked for 0..1 by ``check_float``). The one wording of every reader's
    refusal (Pillow, tifffile, rasterio): signed or 32-bit integers have no natural range
    p2p could map to the model's values."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f" and dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{where}: {dtype.name} samples (p2p reads 8-bit, 16-bit and float "
                         "images)")


def check_float(a: np.ndarray, where) -> np.ndarray:
    """A float image as float32 whose values lie in 0..1 (p2p's rule for float images), else
    an ImageError naming the file: a clip would be a silent wrong result."""
    a = np.asarray(a)
    if not np.isfinite(a).all():
        raise ImageError(f"{where}: float image holds NaN or Inf values (float images must "
                         "hold values in 0..1)")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        raise ImageError(f"{where}: float image values span {lo:g}..{hi:g}, outside 0..1 (p2p "
                         "reads float images in 0..1; rescale it, or save it as 16-bit)")
    return a.astype(np.float32, copy=False)


def _profile_name(icc: bytes) -> str:
    try:
        return ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip()
    except Exception:  # noqa: BLE001 - a profile LittleCMS cannot parse
        return ""


def is_srgb(icc: bytes | None) -> bool:
    """Whether an embedded profile is (a variant of) sRGB, or absent: nothing to convert.
    A profile LittleCMS cannot parse counts as sRGB, as viewers treat it."""
    if not icc:
        return True
    name = _profile_name(icc)
    return not name or name.lower().startswith("srgb")


def refuse_profile(icc: bytes | None, dtype, where) -> None:
    """An ImageError for a non-sRGB profile on a 16-bit or float colour image: Pillow's
    ImageCms converts 8-bit images only, and ignoring the profile would be a silent error."""
    if not is_srgb(icc) and np.dtype(dtype) != np.uint8:
        raise ImageError(f"{where}: a {np.dtype(dtype).name} image with an embedded "
                         f"'{_profile_name(icc)}' colour profile: p2p converts profiles to "
                         "sRGB on 8-bit images only; convert it to sRGB first")


def to_srgb(im: Image.Image, where) -> Image.Image:
    """An 8-bit Pillow image with an embedded colour profile converted to sRGB (RGB, or RGBA
    keeping its alpha); without one, or tagged sRGB, unchanged. Greyscale stays as it is
    (its grey profiles are gamma curves close to sRGB's)."""
    icc = im.info.get("icc_profile")
    if is_srgb(icc) or im.mode not in ("RGB", "RGBA", "CMYK", "P"):
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    out = "RGBA" if im.mode == "RGBA" else "RGB"
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(im, src, _SRGB, outputMode=out,
                                         renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return im  # an unusable profile: shown as sRGB by viewers, so read as sRGB too


def keyed_on_white(a: np.ndarray, key) -> np.ndarray:
    """(H, W, C) with the pixels equal to a PNG tRNS ``key`` (an int for grey, a tuple for
    RGB; compared at the image's own depth, PNG spec 11.3.2.1) made white: the same result as
    Pillow's conversion of an 8-bit image with a transparent colour. No key: unchanged."""
    if key is None or isinstance(key, bytes):  # bytes: a palette's tRNS (8-bit only)
        return a
    key = np.asarray(key if isinstance(key, tuple) else (key,), a.dtype)
    if key.size != a.shape[2]:
        return a
    opaque = ~np.all(a == key, axis=2, keepdims=True)
    return on_white(a, opaque.astype(a.dtype) * a.dtype.type(white(a.dtype)))


def from_pillow(im: Image.Image, where) -> np.ndarray:
    """A loaded Pillow image -> (H, W, C) uint8 | uint16 | float32 at full precision."""
    im = to_srgb(im, where)
    mode = im.mode
    if mode in _16BIT_MODES:
        a = np.asarray(im).astype(np.uint16)[..., None]
        return keyed_on_white(a, im.info.get("transparency"))
    if mode == "I":  # 16-bit greyscale PNG (and PGM) in some Pillow versions
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ImageError(f"{where}: 32-bit integer samples (p2p reads 8-bit, 16-bit and "
                             "float images)")
        return keyed_on_white(a.astype(np.uint16)[..., None], im.info.get("transparency"))
    if mode == "F":
        return check_float(np.asarray(im), where)[..., None]
    grey = mode in ("1", "L", "LA", "La")
    if mode in _ALPHA_MODES or "transparency" in im.info:
        target = "LA" if grey else "RGBA"
        a = np.asarray(im.convert(target))
        return on_white(a[..., :-1], a[..., -1:])
    a = np.asarray(im if mode in ("L", "RGB") else im.convert("L" if grey else "RGB"))
    return a[..., None] if a.ndim == 2 else a


# --- 16-bit colour PNG ---------------------------------------------------------------------

def png16_rawmode(im: Image.Image) -> str | None:
    """The rawmode of a 16-bit colour PNG Pillow would truncate to 8 bits, else None."""
    if im.format != "PNG" or im.mode not in ("RGB", "RGBA") or len(im.tile) != 1:
        return None
    args = im.tile[0].args
    raw = args if isinstance(args, str) else args[0] if args else None
    return raw if isinstance(raw, str) and raw.endswith(";16B") else None


def png16(open_again, im: Image.Image, where) -> np.ndarray:
    """A 16-bit RGB(A) or grey + alpha PNG as uint16. Pillow's PNG decoder unfilters the bytes and then keeps
    one byte of each 16-bit sample: the high one for 'RGB;16B' (big-endian, what PNG
    stores), the low one when told the samples are little-endian ('RGB;16L'). Decoding
    twice and joining the bytes gives every sample exactly (PNG spec section 7.2)."""
    raw = png16_rawmode(im)
    tile = im.tile[0]
    refuse_profile(im.info.get("icc_profile"), "uint16", where)
    if raw == "LA;16B":
        # 16-bit grey + alpha (Pillow: RGBA of the high bytes). Its 4 bytes per pixel are
        # unfiltered alike when read as 8-bit RGBA: L high, L low, A high, A low.
        im._mode = "RGBA"  # noqa: SLF001 - the rawmode must describe 4 bytes per pixel
        im.tile = [tile._replace(args="RGBA" if isinstance(tile.args, str)
                                 else ("RGBA",) + tuple(tile.args[1:]))]
        im.load()
        b = np.asarray(im).astype(np.uint16)
        return on_white((b[..., :1] << 8) | b[..., 1:2], (b[..., 2:3] << 8) | b[..., 3:])
    im.load()
    high = np.asarray(im).astype(np.uint16)
    with open_again() as low_im:
        low_im.tile = [tile._replace(args=raw[:-1] + "L" if isinstance(tile.args, str)
                                     else (raw[:-1] + "L",) + tuple(tile.args[1:]))]
        low_im.load()
        low = np.asarray(low_im).astype(np.uint16)
    a = (high << 8) | low
    if a.shape[-1] == 4:
        return on_white(a[..., :3], a[..., 3:])
    return keyed_on_white(a, im.info.get("transparency"))


# --- TIFF through tifffile -----------------------------------------------------------------

def needs_tifffile(im: Image.Image) -> bool:
    """Whether Pillow would read this TIFF wrongly: colour samples of more than 8 bits
    (truncated to 8), more samples than its mode has bands (RGB + an unspecified extra
    sample opens as RGBX and the band is dropped), signed or 32-bit integer greyscale (mode
    I: read as if unsigned 16-bit), or deeper than 8-bit 'white is zero' greyscale (Pillow
    inverts MINISWHITE at 1 and 8 bits only). ``tiff`` reads, inverts or refuses them."""
    if im.format != "TIFF":
        return False
    tags = getattr(im, "tag_v2", {})
    bits = tags.get(258, (8,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    samples = tags.get(277, 1)
    if im.mode in _16BIT_MODES + ("I", "F") and samples == 1:
        fmt = tags.get(339, 1)
        fmt = fmt[0] if isinstance(fmt, tuple) else fmt
        integer = fmt in (1, 2) and im.mode != "F"
        return int(tags.get(262, 1)) == 0 or (integer and (fmt == 2 or max(bits) > 16))
    return max(bits) > 8 or samples != len(im.getbands()) or im.mode == "RGBX"


def is_tiff(head: bytes) -> bool:
    return head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


_ORIENT_ARRAY = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
                 5: lambda a: a.transpose(1, 0, 2), 6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
                 7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
                 8: lambda a: a.transpose(1, 0, 2)[::-1]}


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W, C) turned upright by its EXIF/TIFF Orientation (1-8; as ``images._ORIENT``)."""
    f = _ORIENT_ARRAY.get(orientation)
    return np.ascontiguousarray(f(a)) if f else a


def tiff_alpha(extra: tuple, photometric: int, samples: int) -> bool:
    """Whether a TIFF's first extra sample is alpha that ``tiff`` composites: its
    ExtraSamples tag says associated (1) or unassociated (2) alpha, and the samples are the
    colour ones plus the extra ones."""
    colour = 3 if photometric == 2 else 1
    return bool(extra) and extra[0] in (1, 2) and samples == colour + len(extra)


def alpha_note(path) -> str | None:
    """What ``decode`` composited away from the file ``path``, for a line that reports its
    band count: '4 samples: RGB + alpha, composited on white' (a TIFF adds which tag says
    so and how to keep the sample as a band), or None when it had no alpha. Reads the
    header only (Pillow; the TIFF tags)."""
    try:
        with Image.open(path) as im:
            if im.format == "TIFF":
                tags = im.tag_v2
                extra = tags.get(338, ())
                extra = extra if isinstance(extra, tuple) else (extra,)
                photometric, samples = int(tags.get(262, 1)), int(tags.get(277, 1))
                if not tiff_alpha(extra, photometric, samples):
                    return None
                colour = "RGB" if photometric == 2 else "grey"
                more = len(extra) - 1
                return (f"{samples} samples: {colour} + alpha"
                        f"{f' + {more} more, dropped' if more else ''}, composited on white: "
                        f"the TIFF's ExtraSamples tag marks sample {samples - more} as alpha; "
                        "tag it unspecified to keep it as a band")
            mode = im.mode
            if mode in _ALPHA_MODES:
                grey = mode in ("LA", "La")
                return f"{2 if grey else 4} samples: {'grey' if grey else 'RGB'} + alpha, " \
                       "composited on white"
            if "transparency" in im.info:
                return "a transparent colour, composited on white"
    except Exception:  # noqa: BLE001 - decoded already; a note is all that is at stake
        return None
    return None


def bands_text(bands: int, where) -> str:
    """'3 bands', and what became of an alpha sample where ``where`` is the image file it
    was decoded from: '3 bands (4 samples: RGB + alpha, composited on white)'. The one
    wording of a band count in a message, so the count never reads as the file's."""
    text = f"{bands} band{'s' if bands != 1 else ''}"
    try:
        is_file = isinstance(where, (str, os.PathLike)) and os.path.isfile(where)
    except (OSError, ValueError):
        is_file = False
    note = alpha_note(where) if is_file else None
    return f"{text} ({note})" if note else text


def tiff(src, where, limit: int) -> np.ndarray:
    """The first image (IFD) of a TIFF through tifffile: every sample of each pixel is a band
    (contiguous or planar), except alpha, composited on white."""
    try:
        import tifffile
    except ImportError:
        raise ImageError(f"{where}: this TIFF (16-bit or float colour, or more than 4 bands) "
                         f"needs tifffile, which is not installed: pip install "
                         f"'p2p[{TIFF_EXTRA}]'") from None
    if hasattr(src, "seek"):
        src.seek(0)
    try:
        with tifffile.TiffFile(src) as tf:
            page = tf.pages.first
            w, h = int(page.imagewidth), int(page.imagelength)
            if w * h > limit:
                raise ImageError(f"{where}: {w}x{h} = {w * h} pixels is over the decompression-"
                                 f"bomb limit {limit} (raise P2P_MAX_IMAGE_PIXELS to allow it)")
            a = page.asarray()
            axes, photometric = page.axes, int(page.photometric)
            extra = tuple(page.extrasamples or ())
            icc = page.tags.valueof(34675)
            orientation = int(page.tags.valueof(274) or 1)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(f"{where}: does not fit in memory") from None
    except Exception as e:  # noqa: BLE001 - tifffile raises many kinds on a bad file
        raise ImageError(f"{where}: cannot decode: {one_line(e)}") from None
    if set(axes) - set("YXS") or "Y" not in axes or "X" not in axes:
        raise ImageError(f"{where}: TIFF axes {axes!r} are not an image (p2p reads the first "
                         "page: height, width and samples)")
    a = a.transpose([axes.index(c) for c in "YX" + ("S" if "S" in axes else "")])
    a = a[..., None] if a.ndim == 2 else a
    check_sample_type(a.dtype, where)
    if a.dtype.kind == "f":
        a = check_float(a, where)
    if photometric == 0:  # MINISWHITE: 0 is white
        a = (1 - a) if a.dtype == np.float32 else np.iinfo(a.dtype).max - a
    elif photometric not in (1, 2):  # MINISBLACK, RGB
        raise ImageError(f"{where}: TIFF photometric {photometric} is not greyscale or RGB "
                         "(p2p reads those, any number of bands)")
    colour = 3 if photometric == 2 else 1
    if tiff_alpha(extra, photometric, a.shape[2]):
        a = on_white(a[..., :colour], a[..., colour:colour + 1], premultiplied=extra[0] == 1)
    if a.shape[2] in (3, 4):
        refuse_profile(bytes(icc) if icc else None, a.dtype, where)
    return orient(np.ascontiguousarray(a), orientation)


def to_uint8(a: np.ndarray) -> np.ndarray:
    """Any depth -> uint8 at the same brightness (16-bit / 257, float x 255, rounded)."""
    if a.dtype == np.uint8:
        return a
    scale = 257.0 if a.dtype == np.uint16 else 1 / 255.0
    return np.clip(np.rint(a.astype(np.float64) / scale), 0, 255).astype(np.uint8)


def to_unit(a: np.ndarray) -> np.ndarray:
    """Any depth -> float32 in 0..1 by its natural range."""
    return a.astype(np.float32) / np.float32(NATURAL_RANGE[a.dtype.name][1])


def from_unit(u: np.ndarray, depth: str) -> np.ndarray:
    """float 0..1 -> ``depth`` (rounded and clipped for integer depths)."""
    top = NATURAL_RANGE[depth][1]
    if depth == "float32":
        return np.clip(u, 0, 1).astype(np.float32)
    return np.clip(np.rint(np.asarray(u, np.float32) * top), 0, top).astype(depth)


def match_bands(a: np.ndarray, bands: int, where="image") -> np.ndarray:
    """(H, W, C) -> (H, W, ``bands``): as is when C matches; greyscale repeated into 3
    bands; RGB to greyscale by Pillow's ITU-R 601-2 luma (L = R 299/1000 + G 587/1000 +
    B 114/1000, bit-exact with Pillow's convert('L') on 8-bit images). Any other mismatch
    is an ImageError naming ``where``."""
    c = a.shape[2]
    if c == bands:
        return a
    if c == 1 and bands == 3:
        return np.repeat(a, 3, axis=2)
    if c == 3 and bands == 1:
        if a.dtype == np.uint8:
            return np.asarray(Image.fromarray(a).convert("L"))[..., None]
        luma = a.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        if a.dtype == np.uint16:
            luma = np.clip(np.rint(luma), 0, 65535).astype(np.uint16)
        return luma[..., None]
    raise ImageError(f"{where}: {bands_text(c, where)}, the model takes {bands}")


def resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) -> (size[1], size[0], C) bicubic, same dtype: 8-bit through Pillow (as the
    reference's transforms.Resize), deeper data per band in float (Pillow's mode F), then
    rounded (uint16) or clipped to 0..1 (float: bicubic overshoots)."""
    if a.dtype == np.uint8:
        if a.shape[2] == 3:
            return np.asarray(Image.fromarray(a).resize(size, Image.BICUBIC))
        return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(a[..., i]))
                                    .resize(size, Image.BICUBIC)) for i in range(a.shape[2])], -1)
    f = resize_float(a.astype(np.float32, copy=False), size)
    return from_unit(f / np.float32(NATURAL_RANGE[a.dtype.name][1]), a.dtype.name) \
        if a.dtype == np.uint16 else np.clip(f, 0, 1)


def resize_float(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) float -> (size[1], size[0], C), bicubic per channel (Pillow's mode F)."""
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(a[..., i], np.float32))
                                .resize(size, Image.BICUBIC)) for i in range(a.shape[-1])], -1)
