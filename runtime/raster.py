"""Large TIFF / GeoTIFF in and out, window by window, through rasterio (GDAL): extra ``geo``.

Imported only where a TIFF is streamed (``p2p-translate --tile`` on a .tif, or
``--format tif`` for a georeferenced input), so the runtime works without rasterio; its
absence is one line naming the extra (``cli/common.EXTRAS``).

    decoder_only(path)                    # why only images.decode reads it right, or None
    reader = RasterReader(path)           # header only: height, width, bands, dtype, georef
    reader.read_rows(y0, y1)              # (y1 - y0, W, bands) array, one strip of rows
    sink = RasterSink(job, h, w, c, georef)  # a tiled, deflate-compressed GeoTIFF
    sink.write_rows(y0, rows)             # (n, W, c) uint8, in order; written by one thread
    sink.close() / sink.abort()           # publish atomically / remove the temp file

Memory: a strip of rows in, at most two strips out (one being written, one filling) and
GDAL's block cache, which is capped (``CACHE_MB``): bounded whatever the image size.
"""

from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import files, pixels
from .errors import ImageError, one_line

RASTER_EXTS = (".tif", ".tiff")
BLOCK = 256  # output block size: GDAL's and most GIS tools' common tiled-GeoTIFF layout
CACHE_MB = 64  # GDAL's block cache (its default is 5% of RAM)
# No .aux.xml side files (PAM) beside inputs or outputs. Set as environment variables (GDAL
# reads them as configuration) rather than a rasterio.Env, which is thread-local while a
# file here is opened, read and closed by different threads; a user's own setting wins.
_ENV = {"GDAL_CACHEMAX": str(CACHE_MB), "GDAL_PAM_ENABLED": "NO"}


def available() -> bool:
    """Whether rasterio imports (extra ``geo``)."""
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


def is_raster_name(path) -> bool:
    return Path(path).suffix.lower() in RASTER_EXTS


def _rasterio():
    for key, value in _ENV.items():
        os.environ.setdefault(key, value)
    import rasterio  # ImportError: cli/common names the extra (geo)
    from rasterio.errors import NotGeoreferencedWarning

    # A plain TIFF has no georeferencing, and its output none either: nothing to warn about.
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    return rasterio


@dataclass(frozen=True)
class Georef:
    """What makes a raster georeferenced; copied unchanged from input to output."""

    crs: Any = None  # rasterio CRS or None
    transform: Any = None  # affine.Affine (pixel -> CRS coordinates)
    gcps: Any = None  # (list of GroundControlPoint, CRS) or None

    def shifted(self, x0: int) -> "Georef":
        """The georeferencing of the columns from ``x0`` on (one half of an A|B pair)."""
        if self.transform is None or self.gcps:
            return self
        from affine import Affine

        return Georef(self.crs, self.transform @ Affine.translation(x0, 0), None)

    @property
    def present(self) -> bool:
        return self.crs is not None or (self.transform is not None
                                        and not self.transform.is_identity)


class RasterReader:
    """One raster opened for strip reads (the file stays open until ``close``)."""

    def __init__(self, path: Path):
        rio = _rasterio()
        self.path = Path(path)
        try:
            self._ds = rio.open(self.path)
        except Exception as e:  # noqa: BLE001 - RasterioIOError, CPLE_*: a bad file
            raise ImageError(f"{self.path}: cannot read as a raster: {one_line(e)}") from None
        ds = self._ds
        # An alpha band is composited on white, the one decoder's rule for every image
        # (images.decode); any other band count is the model's to check.
        alpha = [i for i, ci in enumerate(ds.colorinterp) if ci.name == "alpha"]
        self._alpha = alpha[0] if len(alpha) == 1 and ds.count > 1 else None
        self.height, self.width = ds.height, ds.width
        self.bands = ds.count - (self._alpha is not None)
        self.dtype = np.dtype(ds.dtypes[0])
        try:
            pixels.check_sample_type(self.dtype, self.path)  # int16, int32: the decoder's line
        except ImageError:
            ds.close()
            raise
        gcps = ds.gcps if ds.gcps and ds.gcps[0] else None
        self.georef = Georef(ds.crs, ds.transform, gcps)
        self.strips_read = 0
        self._lock = threading.Lock()

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows y0..y1 (exclusive) of every band: (y1 - y0, W, bands), the file's dtype."""
        from rasterio.windows import Window

        try:
            with self._lock:
                a = self._ds.read(window=Window(0, y0, self.width, y1 - y0))
        except Exception as e:  # noqa: BLE001 - a corrupt block: one line naming the file
            raise ImageError(f"{self.path}: cannot read rows {y0}..{y1}: {one_line(e)}") from None
        self.strips_read += 1
        a = a.transpose(1, 2, 0)
        if a.dtype.kind == "f":  # 0..1, finite: the decoder's rule, never a silent clip
            a = pixels.check_float(a, f"{self.path} (rows {y0}..{y1})")
        if self._alpha is not None:
            colour = np.delete(a, self._alpha, axis=2)
            a = pixels.on_white(colour, a[:, :, self._alpha:self._alpha + 1])
        return a

    def close(self) -> None:
        if self._ds is not None:
            self._ds.close()
            self._ds = None


def decoder_only(path: Path) -> str | None:
    """Why a TIFF must be decoded whole by ``images.decode`` to mean what it means to every
    other command, or None: GDAL's strips are the raw samples, and these tags change them
    (a palette's indices, 'white is zero', the Orientation tag, a non-sRGB colour profile).
    Reads the first IFD's tags only (Pillow's TIFF directory reader, which parses any
    sample layout and size: no image is opened)."""
    from PIL import TiffImagePlugin

    try:
        with open(path, "rb") as fp:
            head = fp.read(8)
            if head[2:4] in (b"+\0", b"\0+"):  # BigTIFF: a 16-byte header
                head += fp.read(8)
            tags = TiffImagePlugin.ImageFileDirectory_v2(head)
            fp.seek(tags.next)
            tags.load(fp)
            photometric, orientation = int(tags.get(262, 1)), int(tags.get(274, 1) or 1)
            icc = tags.get(34675)
    except Exception:  # noqa: BLE001 - GDAL opened it; a header Pillow cannot parse streams
        return None
    if photometric in (0, 3):
        return "a 'white is zero' TIFF" if photometric == 0 else "a palette TIFF"
    if orientation != 1:
        return f"a TIFF with Orientation {orientation}"
    if not pixels.is_srgb(bytes(icc) if icc else None):
        return "a TIFF with a non-sRGB colour profile"
    return None


def half_x0(width: int, half: str | None) -> int:
    """The first column of ``half`` of a ``width``-wide A|B image (``images.half_box``)."""
    from .images import half_box

    return half_box(width, 1, half)[0] if half else 0


def georef_of(path: Path, half: str | None = None) -> Georef:
    """The georeferencing of ``path``, or of its ``half`` ('left', 'right': the transform
    shifted to that half's first column); empty when it has none or is not a raster."""
    if not (is_raster_name(path) and available()):
        return Georef()
    try:
        r = RasterReader(path)
    except ImageError:
        return Georef()
    try:
        return r.georef.shifted(half_x0(r.width, half)) if half else r.georef
    finally:
        r.close()


class RasterSink:
    """A GeoTIFF of (height, width, channels) ``dtype`` (the model's output depth), tiled ``BLOCK`` x ``BLOCK``, deflate
    with the horizontal predictor, the input's CRS and transform (or GCPs). Rows arrive
    in order (``write_rows``) and are written in block-aligned strips by one writer thread
    of its own, so the engine never waits on compression; at most one strip waits."""

    def __init__(self, dst: Path, src: Path, height: int, width: int, channels: int,
                 georef: Georef | None = None, dtype: str = "uint8",
                 description: str | None = None):
        self.dst, self.src, self.dtype = Path(dst), Path(src), dtype
        self.description = description  # the TIFF ImageDescription (provenance.Record)
        self.height, self.width, self.channels = height, width, channels
        self.georef = georef or Georef()
        self.written = 0  # rows on disk (or being written)
        self.strips_written = 0
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="p2p-raster")
        self._last: Future | None = None
        self._tmp = files.stage(self.dst, keep_suffix=True, clean=False)
        self._ds = None
        try:
            self._open()
        except BaseException:
            self.abort()
            raise

    def _open(self) -> None:
        rio = _rasterio()
        g = self.georef
        profile = dict(driver="GTiff", height=self.height, width=self.width,
                       count=self.channels, dtype=self.dtype, tiled=True, blockxsize=BLOCK,
                       blockysize=BLOCK, compress="deflate", predictor=2, zlevel=1,
                       BIGTIFF="IF_SAFER")
        if self.channels == 3:
            profile["photometric"] = "RGB"
        if g.crs is not None:
            profile["crs"] = g.crs
        if g.transform is not None and not g.gcps:
            profile["transform"] = g.transform
        try:
            self._ds = rio.open(self._tmp, "w", **profile)
            if g.gcps:
                self._ds.gcps = g.gcps
            if self.description:  # GDAL writes this metadata item as TIFF tag 270
                self._ds.update_tags(TIFFTAG_IMAGEDESCRIPTION=self.description)
        except Exception as e:  # noqa: BLE001
            raise ImageError(f"{self.src}: cannot write {self.dst}: {one_line(e)}") from None

    def write_rows(self, y0: int, rows: np.ndarray) -> None:
        """(n, W, channels) rows of ``dtype`` starting at image row ``y0`` (in order)."""
        if y0 != self.written + self._pending_rows:
            raise ImageError(f"{self.src}: rows {y0}.. arrived out of order")
        self._pending.append(rows)
        self._pending_rows += len(rows)
        end = y0 + len(rows)
        if self._pending_rows >= BLOCK or end == self.height:
            keep = 0 if end == self.height else self._pending_rows % BLOCK
            strip = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
            rest = strip[len(strip) - keep:] if keep else None
            strip = strip[:len(strip) - keep]
            self._submit(self.written, strip)
            self.written += len(strip)
            self._pending = [rest] if keep else []
            self._pending_rows = keep

    def _submit(self, y0: int, strip: np.ndarray) -> None:
        if self._last is not None:
            self._last.result()  # one strip in flight: memory stays bounded; errors surface
        self._last = self._pool.submit(self._write, y0, np.ascontiguousarray(
            strip.transpose(2, 0, 1)))

    def _write(self, y0: int, bands: np.ndarray) -> None:
        from rasterio.windows import Window

        try:
            self._ds.write(bands, window=Window(0, y0, self.width, bands.shape[1]))
        except Exception as e:  # noqa: BLE001 - disk full, ...
            raise ImageError(f"{self.src}: cannot write {self.dst}: {one_line(e)}") from None
        self.strips_written += 1

    def close(self) -> None:
        if self._last is not None:
            self._last.result()
        if self.written != self.height:
            raise ImageError(f"{self.src}: only {self.written} of {self.height} rows were "
                             "translated")
        self._pool.shutdown()
        try:
            self._ds.close()
        except Exception as e:  # noqa: BLE001
            raise ImageError(f"{self.src}: cannot write {self.dst}: {one_line(e)}") from None
        finally:
            self._ds = None
        files.publish(self._tmp, self.dst, fsync=False)

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._ds is not None:
            try:
                self._ds.close()
            except Exception:  # noqa: BLE001 - the output is being thrown away
                pass
            self._ds = None
        self._tmp.unlink(missing_ok=True)
