"""Sources and sinks: what one ``p2p-translate`` job reads and writes (the interface is in
``p2p.runtime.pipeline``'s docstring), and the plain ones: one file, one piece.

``file_opener`` is the opener of translation without ``--tile``: decode, split, resize or
pad (``images.prepare``); ``FileSink`` encodes and writes atomically, as a georeferenced
GeoTIFF when the input was one and the format is tif. Dynamic-size models refuse images too
large to run whole (``check_whole_size``), in one line naming ``--tile``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from . import files, images
from .errors import ImageError, P2PError
from .plan import Job


# --- sources and sinks: what one job reads and writes -------------------------------------

@dataclass(frozen=True)
class Piece:
    """One model-sized input and where its output belongs.

    ``array``: (C, H, W) float32 in the model's value range, the shape the engine takes
    (the model's size, or a multiple of its ``size_multiple`` for dynamic-size models).
    ``where``: whatever the job's sink needs to put the output back (None for a whole
    file, a tile's window, a frame index); the pipeline never looks at it."""

    array: np.ndarray
    where: Any = None


class Source(Protocol):
    """What a job reads: ``pieces()`` yields ``Piece``s in order. It runs in the feeder
    thread, ahead of the engine; raise an ``ImageError`` naming the file on bad input."""

    def pieces(self) -> Iterator[Piece]: ...


class Sink(Protocol):
    """What a job writes. ``put`` gets each piece's output, (C, H, W) float32 in the model's
    value range, in the source's order, in the engine thread: keep it cheap (heavy work goes
    to ``close`` or a thread of the sink's own). ``close`` runs once, in a writer thread,
    after the last ``put``: finish and publish atomically. ``abort`` runs instead of
    ``close`` after any failure of the job (possibly after some ``put``s): leave nothing."""

    def put(self, where: Any, y: np.ndarray) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


# ``open_job(job)`` runs in a reader thread (decoding may happen there) and gives the job's
# source and sink; raising a P2PError there fails that job alone.
Opener = Callable[[Job], "tuple[Source, Sink]"]


class FileSource:
    """One decoded file as one piece (the whole image, resized or padded for the model)."""

    def __init__(self, prep: images.Prepared):
        self.prep = prep

    def pieces(self) -> Iterator[Piece]:
        yield Piece(self.prep.array)


class FileSink:
    """The model's output for one file, encoded and written atomically on ``close``."""

    def __init__(self, job: Job, prep: images.Prepared, meta, cfg):
        self.job, self.prep, self.meta, self.cfg = job, prep, meta, cfg
        self.y: np.ndarray | None = None

    def put(self, where, y: np.ndarray) -> None:
        self.y = y

    def close(self) -> None:
        # (H, W, C) at the model's output depth (uint8, uint16 or float32)
        a = images.to_array(self.y, self.prep, self.meta, self.cfg.model_size)
        record = self.cfg.record(self.job)
        if self.cfg.fmt == "tif" and (a.shape[1], a.shape[0]) == tuple(self.prep.size):
            from . import raster  # a georeferenced input (or its half) keeps its CRS and transform

            georef = raster.georef_of(self.job.src, self.prep.half)
            if georef.present:
                sink = raster.RasterSink(self.job.dst, self.job.src, a.shape[0], a.shape[1],
                                         a.shape[2], georef, a.dtype.name,
                                         record.text() if record else None)
                try:
                    sink.write_rows(0, a)
                    sink.close()
                except BaseException:
                    sink.abort()
                    raise
                return
        try:
            data = images.encode(a, self.cfg.fmt, record)
        except ValueError as e:  # a format that cannot hold this depth or band count
            raise ImageError(f"{self.job.src}: {e}") from None
        write_bytes(self.job, data)

    def abort(self) -> None:
        self.y = None


def write_bytes(job: Job, data: bytes) -> None:
    """``data`` to ``job.dst`` atomically; a failure is an ImageError naming the input."""
    try:
        # No fsync: a killed process loses nothing that was written; only a power cut could.
        # The folder's stale temps were removed once, before the run (not once per file).
        files.atomic_write(job.dst, lambda tmp: tmp.write_bytes(data), fsync=False, clean=False)
    except P2PError as e:
        raise ImageError(f"{job.src}: {e}") from None


def file_opener(meta, cfg, log=None) -> Opener:
    """The opener of plain translation: decode, split, resize or pad; one piece per file.
    The first automatic A|B split is said through ``log``, once."""
    said = threading.Event()

    def open_job(job: Job):
        if meta.dynamic_size:
            check_whole_size(job.src, meta, cfg.split)
        prep = images.prepare(job.src, meta, cfg.split)
        if prep.half and cfg.split == "auto" and log and not said.is_set():
            said.set()
            log(images.split_note(prep))
        return FileSource(prep), FileSink(job, prep, meta, cfg)

    return open_job


WHOLE_PIXELS = 4_194_304  # 2048 x 2048: ~2.6 GB for the default U-Net (BENCHMARKS.md)


def max_whole_pixels() -> int:
    """The largest image a dynamic-size model runs whole (one tensor, memory growing with
    its area): $P2P_MAX_WHOLE_PIXELS, default ``WHOLE_PIXELS``. Larger ones need --tile."""
    env = os.environ.get("P2P_MAX_WHOLE_PIXELS")
    try:
        limit = int(env) if env else WHOLE_PIXELS
    except ValueError:
        limit = 0
    if limit < 1:
        raise ImageError(f"P2P_MAX_WHOLE_PIXELS={env!r} is not a positive integer")
    return limit


def check_whole_size(src: Path, meta, split: str) -> None:
    """An ImageError naming --tile when ``src`` (its split half) is too large to run whole
    on a dynamic-size model: refused from the header, before decoding, never an
    out-of-memory crash. Files Pillow cannot open, or over the decompression-bomb limit, are
    left to the decoder, which names their problem."""
    from PIL import Image

    images.check_regular_file(src)  # never open a FIFO (it would block) or a device
    try:
        with Image.open(src) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001 - the decoder says what is wrong with it
        return
    if w * h > images.max_pixels():
        return
    if images.choose_half((w, h), split, meta):
        w //= 2
    limit = max_whole_pixels()
    if w * h > limit:
        raise ImageError(f"{src}: {w}x{h} is too large to run whole on this dynamic-size "
                         f"model (over {limit} pixels, P2P_MAX_WHOLE_PIXELS); --tile runs it "
                         f"in {meta.image_size}px tiles at the model's own scale")
