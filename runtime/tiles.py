"""``p2p-translate --tile``: any image size at the model's own scale, in blended tiles.

The image is cut into tiles of the model's training size (``meta.image_size``, fixed-size
and dynamic-size models alike) that overlap by ``overlap`` pixels; each tile is a ``Piece``
of the pipeline (``p2p.runtime.pipeline``), so tiles of one image and of several images
share engine batches. Outputs are blended back with a separable raised-cosine window that
ramps across each overlap and is 1 elsewhere, then divided by the summed weights: a partition
of unity, so a tile's border pixels (zero padding in every convolution, the worst pixels of
a tile) weigh almost nothing and a neighbour's centre takes over smoothly.

Semantics (docs/tiling.md): pix2pix normalises each input on its own statistics (the
paper's test-time rule; p2p exports BatchNorm as per-image normalisation), and it was trained
on 256 crops. With ``--tile`` each tile is normalised on its own statistics, like a training
crop, instead of on the whole image; neighbouring tiles may render the same area slightly
differently, and the overlap blend turns that into a gradual change instead of a step.

Streaming: ``TileSource`` reads the image one strip of tile rows at a time through a
``read_rows(y0, y1) -> (y1 - y0, W, C) uint8`` function (a decoded array, or a raster
window reader: ``p2p.runtime.raster``); ``Blender`` keeps only the rows not yet final and
hands finished rows to an ``emit(y0, rows)`` function (an in-memory canvas, or a raster
writer). Memory: about (tile + step) rows x width x channels x 8 bytes, whatever the height.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from . import images
from .errors import DataError, ImageError
from .metadata import ModelMetadata
from .pieces import Piece, write_bytes


def default_overlap(tile: int) -> int:
    """Pixels shared by neighbouring tiles by default: a quarter of the tile (64 at 256).
    Why (measured, docs/tiling.md): a tile's border pixels are its worst (zero padding in
    every convolution) and the blend must fade across more than that band. On a 512 px
    photo through a tiny per-image-normalised model at 32 px tiles, the seam measure read
    7.0 hand-cut, 2.2 at an eighth, 1.21 at a quarter (whole image: 1.35), no lower at
    three eighths or a half; a quarter costs (T / (T - overlap))^2 = 1.78x the pixels."""
    return max(2, tile // 4)


def starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis: every ``tile - overlap`` pixels, the last one flush with
    the end (so it overlaps its neighbour by more). One tile when ``length <= tile``."""
    if length <= tile:
        return [0]
    step = tile - overlap
    n = math.ceil((length - tile) / step) + 1
    return [min(i * step, length - tile) for i in range(n)]


def _ramp(n: int) -> np.ndarray:
    """n weights rising from ~0 to ~1: sin^2(pi/2 (k + 1/2) / n). A rising and a falling ramp
    over the same n pixels sum to exactly 1 (sin^2 + cos^2)."""
    return (np.sin(np.pi / 2 * (np.arange(n) + 0.5) / n) ** 2).astype(np.float32)


def window_1d(s: list[int], i: int, tile: int, length: int) -> np.ndarray:
    """Weights of tile ``i`` along one axis over its valid pixels (clipped to ``length``):
    rising across its overlap with tile i-1, falling across its overlap with tile i+1."""
    n = min(tile, length - s[i])
    w = np.ones(n, np.float32)
    if i > 0:
        k = min(s[i - 1] + tile - s[i], n)
        w[:k] *= _ramp(k)
    if i + 1 < len(s):
        k = min(s[i] + tile - s[i + 1], n)
        w[n - k:] *= _ramp(k)[::-1]
    return w


@dataclass(frozen=True)
class Tile:
    """Where a tile belongs: grid row and column, top-left pixel, valid height and width
    (smaller than the model's size only where the image is)."""

    row: int
    col: int
    y: int
    x: int
    h: int
    w: int


@dataclass(frozen=True)
class Grid:
    height: int
    width: int
    tile: int
    overlap: int

    def __post_init__(self):
        if not 0 <= self.overlap <= self.tile // 2:
            raise ImageError(f"tile overlap {self.overlap} px: must be 0 .. {self.tile // 2} "
                             f"(half the model's {self.tile} px tile)")

    @property
    def ys(self) -> list[int]:
        return starts(self.height, self.tile, self.overlap)

    @property
    def xs(self) -> list[int]:
        return starts(self.width, self.tile, self.overlap)

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)


def _pad_to(a: np.ndarray, size: int) -> np.ndarray:
    """(h, w, C) -> (size, size, C): reflect at the bottom and right (edge where too small
    to reflect), as ``images.pad_to_multiple`` pads whole images; cropped after the model."""
    ph, pw = size - a.shape[0], size - a.shape[1]
    if not ph and not pw:
        return a
    mode = "reflect" if ph < a.shape[0] and pw < a.shape[1] else "edge"
    return np.pad(a, ((0, ph), (0, pw), (0, 0)), mode=mode)


class TileSource:
    """The tiles of one image, row by row. ``read_rows(y0, y1)`` gives (y1 - y0, W, C) uint8;
    each strip is read once for its row of tiles (``reads`` counts them, for the tests of
    bounded memory). Pieces: (in_channels, tile, tile) float32 via ``images.normalize``."""

    def __init__(self, read_rows: Callable[[int, int], np.ndarray], grid: Grid,
                 meta: ModelMetadata, name: str = ""):
        self.read_rows, self.grid, self.meta, self.name = read_rows, grid, meta, name
        self.reads = 0

    def pieces(self) -> Iterator:
        g, t = self.grid, self.grid.tile
        for r, y in enumerate(g.ys):
            h = min(t, g.height - y)
            strip = self.read_rows(y, y + h)
            self.reads += 1
            if strip.ndim == 2:
                strip = strip[:, :, None]
            for c, x in enumerate(g.xs):
                w = min(t, g.width - x)
                # normalize names the file (``where``) in its errors: nothing to add.
                arr = images.normalize(_pad_to(strip[:, x:x + w], t), self.meta,
                                       where=self.name)
                yield Piece(arr, Tile(r, c, y, x, h, w))


class Blender:
    """Weighted sum of tile outputs, streamed: ``put`` tiles in row-major order; once a row of
    tiles is complete, every image row above the next tile row is final and goes to
    ``emit(y0, rows)`` as (n, W, C) uint8 (``images.denormalize``). ``emitted`` counts the
    rows handed on (all of them once the last tile is in)."""

    def __init__(self, grid: Grid, channels: int, meta: ModelMetadata,
                 emit: Callable[[int, np.ndarray], None]):
        self.grid, self.meta, self.emit, self.channels = grid, meta, emit, channels
        ys, xs = grid.ys, grid.xs
        self._ys, self._ncols = ys, len(xs)
        self._wy = [window_1d(ys, i, grid.tile, grid.height) for i in range(len(ys))]
        self._wx = [window_1d(xs, i, grid.tile, grid.width) for i in range(len(xs))]
        self._row, self._count = -1, 0
        self._base = 0  # image row of acc[:, 0]
        self._acc = np.zeros((channels, 0, grid.width), np.float32)
        self._wsum = np.zeros((0, grid.width), np.float32)
        self.emitted = 0

    def _start_row(self, r: int) -> None:
        y, h = self._ys[r], min(self.grid.tile, self.grid.height - self._ys[r])
        end = y + h
        keep = self._base + self._acc.shape[1] - y  # rows of the previous tile row that overlap
        acc = np.zeros((self.channels, end - y, self.grid.width), np.float32)
        wsum = np.zeros((end - y, self.grid.width), np.float32)
        if keep > 0:
            acc[:, :keep] = self._acc[:, y - self._base:]
            wsum[:keep] = self._wsum[y - self._base:]
        self._acc, self._wsum, self._base = acc, wsum, y
        self._row, self._count = r, 0

    def put(self, tile: Tile, y: np.ndarray) -> None:
        """One tile's output, (C, tile, tile) float32 in the model's range."""
        if tile.row != self._row:
            if tile.row != self._row + 1 or (self._row >= 0 and self._count != self._ncols):
                raise ImageError(f"tile {tile.row},{tile.col} arrived out of order")
            self._start_row(tile.row)
        w = self._wy[tile.row][:, None] * self._wx[tile.col][None, :]
        top = tile.y - self._base
        self._acc[:, top:top + tile.h, tile.x:tile.x + tile.w] += y[:, :tile.h, :tile.w] * w
        self._wsum[top:top + tile.h, tile.x:tile.x + tile.w] += w
        self._count += 1
        if self._count == self._ncols:
            last = tile.row + 1 == len(self._ys)
            self._flush(self.grid.height if last else self._ys[tile.row + 1])

    def _flush(self, end: int) -> None:
        n = end - self._base
        if n <= 0:
            return
        out = self._acc[:, :n] / self._wsum[:n]
        self.emit(self._base, images.denormalize(out, self.meta))
        self.emitted += n
        self._acc, self._wsum = self._acc[:, n:], self._wsum[n:]
        self._base = end


class CanvasSink:
    """Blended tiles into one image (the model's output depth) in memory, encoded
    (``images.encode``) and written atomically on ``close``: PNG, JPEG, WebP, or TIFF where
    the raster writer is not used."""

    def __init__(self, job, grid: Grid, meta: ModelMetadata, fmt: str,
                 record=None):
        self.job, self.fmt, self.record = job, fmt, record  # record: provenance.Record
        channels = meta.out_channels
        self.canvas = np.zeros((grid.height, grid.width, channels), np.dtype(meta.output_depth))
        self.blender = Blender(grid, channels, meta, self._emit)

    def _emit(self, y0: int, rows: np.ndarray) -> None:
        self.canvas[y0:y0 + len(rows)] = rows

    def put(self, where: Tile, y: np.ndarray) -> None:
        self.blender.put(where, y)

    def close(self) -> None:
        if self.blender.emitted != self.canvas.shape[0]:
            raise ImageError(f"{self.job.src}: only {self.blender.emitted} of "
                             f"{self.canvas.shape[0]} rows were translated")
        try:
            data = images.encode(self.canvas, self.fmt, self.record)
        except ValueError as e:  # a format that cannot hold this depth or band count
            raise ImageError(f"{self.job.src}: {e}") from None
        write_bytes(self.job, data)

    def abort(self) -> None:
        self.canvas = None


def seam_score(img: np.ndarray, periods: range | None = None, edge: int = 16) -> float:
    """How visible a periodic grid is in ``img`` ((H, W) or (H, W, C), any dtype): 1.0 for
    none, larger for a stronger grid. The mean absolute difference between neighbouring
    columns (and, separately, rows) is a gradient profile g, without ``edge`` pixels at each
    end (the image's own border effects). For each candidate period P, g is folded modulo P
    (mean per phase) and scored as the largest phase mean over the median one: a tile grid
    puts every seam at one phase of its period, image content spreads over all phases. The
    result is the largest over both axes and every P (default 16 .. (length - 2 edge) / 6,
    so that at least six periods are folded and one odd row cannot pass for a grid).
    Source: this project (docs/tiling.md): a comb filter on the image gradient."""
    a = np.asarray(img, np.float64)
    if a.ndim == 2:
        a = a[:, :, None]
    best = 1.0
    for g in (np.abs(np.diff(a, axis=1)).mean(axis=(0, 2)),
              np.abs(np.diff(a, axis=0)).mean(axis=(1, 2))):
        g = g[edge:len(g) - edge]
        for p in periods or range(16, len(g) // 6 + 1):
            if len(g) < 2 * p:
                continue
            folded = g[:len(g) // p * p].reshape(-1, p).mean(axis=0)
            med = float(np.median(folded))
            if med > 0:
                best = max(best, float(folded.max()) / med)
    return best


class RasterTileSink:
    """Blended tiles streamed into a tiled, compressed GeoTIFF (``p2p.runtime.raster``)."""

    def __init__(self, job, grid: Grid, meta: ModelMetadata, georef,
                 record=None):
        from .raster import RasterSink

        self.raster = RasterSink(job.dst, job.src, grid.height, grid.width,
                                 meta.out_channels, georef, meta.output_depth,
                                 record.text() if record else None)
        self.blender = Blender(grid, meta.out_channels, meta, self.raster.write_rows)

    def put(self, where: Tile, y: np.ndarray) -> None:
        self.blender.put(where, y)

    def close(self) -> None:
        self.raster.close()

    def abort(self) -> None:
        self.raster.abort()


def check_tiling(meta: ModelMetadata, overlap: int | None, model="the model") -> int:
    """The overlap ``--tile`` runs with (``overlap``, None: ``default_overlap``), or one
    DataError line before any work (p2p-translate calls it with the model file's metadata,
    before the engine loads): a colorization (Lab) model, or an overlap outside
    0 .. half the model's tile (``Grid``'s rule), said with the range allowed."""
    if meta.color_space == "lab":
        raise DataError("--tile does not run colorization (Lab) models: their output "
                        "depends on the whole image's lightness; run them without --tile")
    tile = meta.image_size
    if overlap is None:
        return default_overlap(tile)
    if not 0 <= overlap <= tile // 2:
        raise DataError(f"--tile-overlap {overlap} px: must be 0 .. {tile // 2} (half of "
                        f"{model}'s {tile} px tile; the default is {default_overlap(tile)})")
    return overlap


def tile_opener(meta: ModelMetadata, cfg, log=None):
    """The pipeline opener of ``--tile``: for each job a ``TileSource`` (a TIFF streamed by
    rasterio where it is installed, any other image decoded whole by ``images.decode``)
    and a sink (a streamed GeoTIFF for ``--format tif`` with rasterio, else one image in
    memory, refused above the decompression-bomb limit since it could not stream)."""
    from . import raster

    overlap = check_tiling(meta, cfg.tile_overlap)
    tile = meta.image_size
    streams = raster.available()
    if log:
        log(f"tiles: {tile}x{tile} (the model's training size), overlap {overlap}px, "
            f"{'blended' if overlap else 'no overlap, no blend'}; TIFFs {'stream window by window' if streams else 'decode whole'} "
            f"({'rasterio' if streams else 'no rasterio: pip install p2p[geo] to stream'})")

    def open_job(job):
        reader = None
        if streams and raster.is_raster_name(job.src):
            images.check_regular_file(job.src)
            if not raster.decoder_only(job.src):  # (a palette, Orientation...: decoded whole)
                reader = raster.RasterReader(job.src)
        if reader is not None:
            h, w, georef = reader.height, reader.width, reader.georef
            half = images.choose_half((w, h), cfg.split, meta)  # the rule of every image
            x0 = raster.half_x0(w, half)
            w = w // 2 if half else w
            georef = georef.shifted(x0) if half else georef
            read_rows = lambda y0, y1, r=reader.read_rows: r(y0, y1)[:, x0:x0 + w]  # noqa: E731
        else:
            a = images.decode(job.src)  # full depth and bands: images.normalize takes them
            half = images.choose_half((a.shape[1], a.shape[0]), cfg.split, meta)
            a = images.crop_half(a, half)
            h, w = a.shape[:2]
            georef = raster.georef_of(job.src, half) if streams else None
            read_rows = lambda y0, y1: a[y0:y1]  # noqa: E731
        try:
            grid = Grid(h, w, tile, overlap)
            if cfg.fmt == "tif" and streams:
                sink = RasterTileSink(job, grid, meta, georef, cfg.record(job))
            elif h * w > images.max_pixels():
                raise ImageError(f"{job.src}: a {w}x{h} {cfg.fmt.upper()} output would be "
                                 "held whole in memory; --format tif streams it to disk")
            else:
                sink = CanvasSink(job, grid, meta, cfg.fmt, cfg.record(job))
        except BaseException:
            if reader is not None:
                reader.close()
            raise
        source = TileSource(read_rows, grid, meta, str(job.src))
        if reader is not None:
            source = _Closing(source, reader)
        return source, sink

    return open_job


class _Closing:
    """A source that closes its reader once its pieces are all read (or it is dropped)."""

    def __init__(self, source: TileSource, reader):
        self.source, self.reader = source, reader

    def pieces(self) -> Iterator:
        try:
            yield from self.source.pieces()
        finally:
            self.reader.close()
