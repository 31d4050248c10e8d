"""Encoding a model's outputs: the PNG writer, TIFF, JPEG and WebP, and which format holds
which images. Part of ``images`` (which re-exports every name here)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, PngImagePlugin

from .errors import ImageError
from .metadata import ModelMetadata
from .pixels import TIFF_EXTRA
from .provenance import KEY, Record

# Output formats of every command (p2p-translate --format, p2p-serve ?format=): tif holds
# any depth and band count (``format_problem`` says what the others hold).
FORMATS = ("png", "jpg", "webp", "tif")


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


def png_bytes(a: np.ndarray, text: str | None = None) -> bytes:
    """A lossless PNG of a uint8 or uint16 (H, W), (H, W, 1) or (H, W, 3) array: every row
    with the Up filter (each byte minus the one above it, computed by numpy in one pass) and
    zlib level 1 with the RLE strategy; 16-bit samples are stored big-endian, as PNG
    requires (the Up filter works on bytes, whatever the sample size). Why not Pillow's
    encoder: at p2p-translate's INT8 rate (100+ images/s on two cores) PNG encoding was the
    largest cost after the model; on a 256x256 facade this is ~5x faster than Pillow's level
    1 Huffman-only (measured side by side on a loaded 2-core Xeon: 4.3 vs 22.8 ms) for files
    ~18% larger (125 vs 106 kB): after the Up filter a photo's bytes are small numbers that
    Huffman/RLE coding packs well, and LZ77 matching finds little. The deflate is ISA-L's
    where the ``isal`` package is installed (a dependency of p2p), zlib's level 1 RLE
    otherwise; both write a standard zlib stream. Pillow cannot write 16-bit colour PNGs at
    all. ``text``: a ``tEXt`` chunk (keyword ``provenance.KEY``, Latin-1) before the image
    data: p2p-translate's record of what made the file. Format: PNG specification
    (ISO/IEC 15948) sections 5, 7.2, 9.2, 11.2 and 11.3.4.3."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    h, w = a.shape[:2]
    channels = 1 if a.ndim == 2 else a.shape[2]
    if channels not in (1, 3):
        raise ValueError(f"png_bytes: {channels} channels (PNG greyscale or RGB: 1 or 3)")
    bits = 16 if a.dtype == np.uint16 else 8
    row_bytes = w * channels * bits // 8
    if bits == 16:
        rows = np.ascontiguousarray(a, ">u2").view(np.uint8).reshape(h, row_bytes)
    else:
        rows = np.ascontiguousarray(a, np.uint8).reshape(h, row_bytes)
    raw = np.empty((h, row_bytes + 1), np.uint8)
    raw[:, 0] = 2  # filter type Up; row 0 sees an all-zero row above it
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # uint8 wraps: arithmetic mod 256
    idat = _deflate(raw.data)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", w, h, bits, 0 if channels == 1 else 2, 0, 0, 0)
    note = b"" if text is None else chunk(b"tEXt", KEY.encode() + b"\0" + text.encode("latin-1"))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + note + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


# --- any format ------------------------------------------------------------------------------

def format_problem(fmt: str, depth: str, bands: int) -> str | None:
    """Why images of ``depth`` and ``bands`` cannot be written as ``fmt``, or None.
    tif holds any depth and band count; png 8- or 16-bit, 1 or 3 bands; jpg/webp 8-bit."""
    if fmt not in FORMATS:
        return f"format {fmt!r} is not one of {'|'.join(FORMATS)}"
    if fmt == "tif":
        return None
    if depth == "float32" or (depth == "uint16" and fmt != "png"):
        better = "tif" if depth == "float32" else "png or tif"
        return f"{fmt} cannot hold {depth} samples: use --format {better}"
    if bands not in (1, 3):
        return f"{fmt} holds 1 or 3 bands, not {bands}: use --format tif"
    return None


def output_kind(meta: ModelMetadata) -> tuple[str, int]:
    """(depth, bands) of the images a model's outputs become."""
    return meta.output_depth, 3 if meta.color_space == "lab" else meta.out_channels


def default_format(meta: ModelMetadata) -> str:
    """png where it holds the model's outputs (8/16-bit, 1 or 3 bands), else tif."""
    return "png" if format_problem("png", *output_kind(meta)) is None else "tif"


def encode(img, fmt: str, record: Record | None = None) -> bytes:
    """Bytes of ``img`` (an (H, W[, C]) uint8|uint16|float32 array or a Pillow image) in
    ``fmt``, tuned so encoding never holds up inference: PNG (lossless) through
    ``png_bytes`` for 8/16-bit RGB and greyscale (Pillow at compress_level 1 with zlib's
    Huffman-only strategy for other Pillow modes); JPEG at quality 95, lossy WebP at
    quality 90; TIFF deflate-compressed (any depth and band count). ``record``: what made
    the output (``p2p.runtime.provenance``), written into it: a PNG tEXt chunk, the JPEG
    comment, WebP XMP, the TIFF ImageDescription. ValueError when the format cannot hold
    the image (``format_problem``)."""
    buf = io.BytesIO()
    text = record.text() if record is not None else None
    if isinstance(img, Image.Image):
        if fmt == "png" and img.mode not in ("L", "RGB"):
            info = None
            if text is not None:
                info = PngImagePlugin.PngInfo()
                info.add_text(KEY, text)
            img.save(buf, "PNG", compress_level=1, compress_type=zlib.Z_HUFFMAN_ONLY,
                     pnginfo=info)
            return buf.getvalue()
        img = np.asarray(img)
    a = img[..., None] if img.ndim == 2 else img
    why = format_problem(fmt, a.dtype.name, a.shape[2])
    if why:
        raise ValueError(why)
    if fmt == "png":
        return png_bytes(a, text)
    if fmt == "tif":
        return tiff_bytes(a, text)
    pil = Image.fromarray(a[..., 0] if a.shape[2] == 1 else a)
    if fmt == "jpg":
        pil.save(buf, "JPEG", quality=95, **({"comment": text.encode()} if text else {}))
    else:
        pil.save(buf, "WEBP", quality=90, method=2,
                 **({"xmp": record.xmp()} if record is not None else {}))
    return buf.getvalue()


def tiff_bytes(a: np.ndarray, description: str | None = None) -> bytes:
    """A deflate-compressed TIFF of (H, W, C) uint8|uint16|float32: RGB for 3 bands,
    greyscale (MinIsBlack) with C samples per pixel otherwise, ``description`` in its
    ImageDescription tag. Through tifffile (``p2p[tiff]``); without it Pillow writes 8-bit
    greyscale/RGB and 1-band 16-bit/float."""
    buf = io.BytesIO()
    try:
        import tifffile
    except ImportError:
        mode = {("uint8", 1): "L", ("uint8", 3): "RGB", ("uint16", 1): "I;16",
                ("float32", 1): "F"}.get((a.dtype.name, a.shape[2]))
        if mode is None:
            raise ImageError(f"a {a.shape[2]}-band {a.dtype} TIFF needs tifffile, which is "
                             f"not installed: pip install 'p2p[{TIFF_EXTRA}]'") from None
        Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(
            buf, "TIFF", compression="tiff_adobe_deflate",
            **({"tiffinfo": {270: description}} if description else {}))
        return buf.getvalue()
    tifffile.imwrite(buf, a[..., 0] if a.shape[2] == 1 else a,
                     photometric="rgb" if a.shape[2] == 3 else "minisblack",
                     planarconfig=None if a.shape[2] == 1 else "contig",
                     compression="zlib", compressionargs={"level": 1},
                     description=description, metadata=None if description else {})
    return buf.getvalue()
