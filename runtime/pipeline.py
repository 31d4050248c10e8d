"""sources -> batcher -> engine -> sinks: what ``p2p-translate`` runs.

Every input (a ``Job``: src, dst) is opened into a **source** and a **sink**:

    open_job(job) -> (source, sink)     # a reader thread; may decode; P2PError fails the job
    source.pieces() -> Iterator[Piece]  # the feeder thread, in order, ahead of the engine
    Piece(array, where)                 # array: (C, H, W) float32 in the model's value range
                                        # at a size the engine takes; where: the sink's key
    sink.put(where, y)                  # the engine thread, in piece order; y: (C, H, W)
                                        # float32 in the model's value range; keep it cheap
    sink.close()                        # a writer thread, once after the last put: publish
    sink.abort()                        # instead of close after any failure: leave nothing

A plain image is one piece (``file_opener``: ``FileSource``, ``FileSink``); these and the
types ``Piece``, ``Source``, ``Sink``, ``Opener`` live in ``p2p.runtime.pieces`` and are
importable from here too. A tiled image is many pieces whose ``where`` is their window
(``p2p.runtime.tiles``); a video would be one piece per frame. ``run_jobs(engine, jobs,
cfg, opener=...)`` runs any of them: reader threads open jobs ahead, one feeder thread
walks the opened jobs in input order and queues their pieces, the calling thread batches
pieces of one shape (across jobs) through ``Engine.submit`` (one batch left running on the
engine while the next is gathered: the engine never waits on this thread) and hands each
output to its job's sink, writer threads close the sinks. Every queue is bounded (about 2 x batch + workers
items), so memory stays flat whatever the number of inputs; results come back in input
order. A job that fails to open, read, run or write is recorded with its reason (its sink
aborted); the run goes on.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import files, gallery, images, video
from .engine import Engine
from .errors import ModelError, P2PError, one_line
from .modelfile import read_metadata
from .pieces import (FileSink, FileSource, Opener, Piece, Sink, Source,  # noqa: F401  (public here)
                     file_opener, max_whole_pixels, write_bytes)
from .plan import OUTPUT_SUFFIX, Job, default_root, plan, scan  # noqa: F401  (scan: public here too)


@dataclass(frozen=True)
class TranslateConfig:
    inputs: tuple[Path, ...]
    model: Path | None = None  # required; Optional only to keep the field order
    output: Path | None = None  # None: "<input>-translated" beside each input
    provider: str = "auto"
    batch_size: int = 8
    threads: int | None = None
    precision: str = "auto"  # auto | fp32 | bf16 | int8 (p2p.runtime.precision)
    fmt: str | None = None  # None: images.default_format (png, tif for float/N-band models)
    split: str = "auto"
    model_size: bool = False
    glob: str | None = None
    html: bool = False
    overwrite: bool = False
    workers: int | None = None  # decode and encode threads each; None: min(4, CPUs)
    progress: bool = True
    tile: bool = False  # run in overlapping tiles at the model's own scale (runtime/tiles.py)
    tile_overlap: int | None = None  # pixels shared by neighbouring tiles; None: the default
    video_codec: str = "auto"  # video outputs: an FFmpeg encoder name (p2p.runtime.video)
    crf: int | None = None  # video outputs: constant quality; None: the codec's default


@dataclass
class Summary:
    provider: str = ""
    translated: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    galleries: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    tiles: int = 0  # pieces run with --tile (0 otherwise)
    frames: int = 0  # video frames translated (each counts as an image in the rate)
    videos: list[str] = field(default_factory=list)  # one line per video written

    def lines(self) -> list[str]:
        done = sum(1 for j in self.translated if not j.video) + self.frames
        rate = done / self.seconds if self.seconds else 0.0
        # --tile: one image may be thousands of tiles; the tile rate is the one to read
        tiles = (f"{rate:.2f} images/s, {self.tiles / self.seconds:.1f} tiles/s"
                 if self.tiles and self.seconds else f"{rate:.1f} images/s")
        out = [f"translated {len(self.translated)}, skipped {len(self.skipped)}, "
               f"failed {len(self.failed)} ({tiles} on {self.provider})"]
        out += [f"video: {v}" for v in self.videos]
        out += [f"failed: {line}" for _, reason in self.failed for line in reason.splitlines()]
        out += [f"gallery: {g}" for g in self.galleries]
        return out


# --- running ------------------------------------------------------------------------------

_END = object()  # the feeder's marker after a job's last piece
IN_FLIGHT = 1  # batches left running on the engine while the next one is gathered


@dataclass
class _State:  # one job in flight, seen only by the engine thread
    sink: Any
    pending: int = 0  # pieces queued or batched whose output has not been put yet
    ended: bool = False  # the source has no more pieces
    failed: bool = False


def run_jobs(engine: Engine, jobs: list[Job], cfg: TranslateConfig, bar=None,
             log=None, opener: Opener | None = None,
             counts: dict | None = None) -> list[str | None]:
    """Translate ``jobs``; returns, in input order, None for success or the failure reason.

    Reader threads open jobs ahead (``opener``, default ``file_opener``); one feeder thread
    walks the opened jobs in order and queues their pieces; the calling thread batches
    pieces of one shape (across jobs), runs the engine and hands outputs to each job's sink;
    writer threads close sinks. Every queue is bounded, so memory stays flat. ``counts``,
    when given, gets ``pieces``: how many pieces ran through the engine."""
    meta, bs = engine.metadata, engine.batch_size
    opener = opener or file_opener(meta, cfg, log)
    workers = cfg.workers or min(4, os.cpu_count() or 1)
    window = 2 * bs + workers  # opened jobs ahead, queued pieces, and outputs waiting to write
    results: list[str | None] = [None] * len(jobs)
    stop = threading.Event()
    feed: queue.Queue = queue.Queue(maxsize=window)
    opening: deque = deque()
    writing: deque = deque()

    def done(i: int, reason: str | None = None) -> None:
        results[i] = reason
        if bar is not None:
            bar.update(1)

    def send(item) -> bool:
        while not stop.is_set():
            try:
                feed.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def feeder(readers: ThreadPoolExecutor) -> None:
        upcoming = iter(range(len(jobs)))
        try:
            while not stop.is_set():
                while len(opening) < window:  # keep the readers ahead of the engine
                    i = next(upcoming, None)
                    if i is None:
                        break
                    opening.append((i, readers.submit(opener, jobs[i])))
                if not opening:
                    break
                i, fut = opening.popleft()
                sink = None
                try:
                    source, sink = fut.result()
                    if not send((i, sink, None)):
                        return
                    for piece in source.pieces():
                        if not send((i, None, piece)):
                            return
                    item = (i, None, _END)
                except P2PError as e:
                    item = (i, sink, str(e))
                except Exception as e:
                    item = (i, sink, f"{jobs[i].src}: cannot decode: {one_line(e)}")
                if not send(item):
                    return
        finally:
            send(None)

    states: dict[int, _State] = {}
    batch: list[tuple[int, Piece]] = []

    def fail(i: int, reason: str) -> None:
        st = states.get(i)
        if st is None or st.failed:
            return
        st.failed = True
        try:
            st.sink.abort()
        except Exception:  # noqa: BLE001 - the job has failed already; keep its first reason
            pass
        done(i, reason)

    def finish_if_done(i: int) -> None:
        st = states[i]
        if st.ended and not st.pending:
            del states[i]
            if not st.failed:
                writing.append((i, st.sink, writers.submit(st.sink.close)))

    def drain(limit: int) -> None:
        while len(writing) > limit:
            i, sink, fut = writing.popleft()
            try:
                fut.result()
                done(i)
            except Exception as e:  # an encoder bug must not cost the other outputs
                reason = str(e) if isinstance(e, P2PError) else \
                    f"{jobs[i].src}: cannot encode: {one_line(e)}"
                try:
                    sink.abort()
                except Exception:  # noqa: BLE001
                    pass
                done(i, reason)

    def submit(items: list[tuple[int, Piece]]):
        """Start a batch on the engine: (items still wanted, Future or None)."""
        for i, _ in items:
            if states[i].failed:  # its job failed since: the piece is dropped, not run
                states[i].pending -= 1
                finish_if_done(i)
        items = [(i, p) for i, p in items if i in states and not states[i].failed]
        if not items:
            return items, None
        try:
            return items, engine.submit(np.stack([p.array for _, p in items]))
        except Exception as e:  # noqa: BLE001 - refused at once (a shape): complete() sorts it
            failed: Future = Future()
            failed.set_exception(e)
            return items, failed

    def complete(items: list[tuple[int, Piece]], fut) -> None:
        """Wait for a batch and hand its outputs to the sinks, in piece order. A batch that
        fails is run again image by image, so only the input that fails is lost."""
        ys = None
        if fut is not None:
            try:
                ys = fut.result()
                if counts is not None:
                    counts["pieces"] = counts.get("pieces", 0) + len(items)
            except Exception as e:
                if len(items) > 1:  # find the input that fails; the rest still run
                    for item in items:
                        complete(*submit([item]))
                    return
                if items and not states[items[0][0]].failed:
                    i = items[0][0]
                    fail(i, f"{jobs[i].src}: inference failed: {one_line(e)[:300]}")
        for k, (i, piece) in enumerate(items):
            st = states[i]
            st.pending -= 1
            if ys is not None and not st.failed:
                try:
                    st.sink.put(piece.where, ys[k])
                except P2PError as e:
                    fail(i, str(e))
                except Exception as e:
                    fail(i, f"{jobs[i].src}: cannot write: {one_line(e)}")
            finish_if_done(i)
        drain(window)

    # Batches in flight on the engine: the next one is queued while the oldest's outputs
    # are written, so the engine's cores never wait on this thread (the barrier at each
    # batch's end cost ~10% of INT8 throughput on two cores, issue 21).
    running: deque = deque()

    def flush(wait_all: bool = False) -> None:
        nonlocal batch
        if batch:
            run, batch = batch, []
            running.append(submit(run))
        while running and (wait_all or len(running) > IN_FLIGHT):
            complete(*running.popleft())

    with ThreadPoolExecutor(workers, thread_name_prefix="p2p-decode") as readers, \
            ThreadPoolExecutor(workers, thread_name_prefix="p2p-encode") as writers:
        thread = threading.Thread(target=feeder, args=(readers,), name="p2p-feed", daemon=True)
        thread.start()
        try:
            while (item := feed.get()) is not None:
                i, sink, what = item
                if sink is not None and what is None:  # a job starts
                    states[i] = _State(sink)
                elif isinstance(what, Piece):
                    states[i].pending += 1
                    if batch and what.array.shape != batch[0][1].array.shape:
                        flush()  # dynamic-size models: one batch holds one shape
                    batch.append((i, what))
                    if len(batch) == bs:
                        flush()
                elif what is _END:
                    states[i].ended = True
                    finish_if_done(i)
                else:  # the job failed in its reader: what is the reason
                    if i in states:
                        fail(i, what)
                        states[i].ended = True
                        finish_if_done(i)
                    else:
                        done(i, what)
            flush(wait_all=True)
            drain(0)
        finally:
            stop.set()
            for _, fut in list(opening):
                fut.cancel()
            for _, sink, fut in list(writing):
                fut.cancel()
            for st in states.values():
                if not st.failed:
                    try:
                        st.sink.abort()
                    except Exception:  # noqa: BLE001
                        pass
            thread.join()
    return results


def output_format(fmt: str | None, meta, model: Path) -> str:
    """The format outputs are written in: ``fmt``, or the model's default; a format that
    cannot hold the model's outputs (a 16-bit model and --format jpg) fails before the run."""
    fmt = fmt or images.default_format(meta)
    why = images.format_problem(fmt, *images.output_kind(meta))
    if why:
        depth, bands = images.output_kind(meta)
        raise P2PError(f"{model}: the model writes {bands}-band {depth} images; {why}")
    return fmt


def translate(cfg: TranslateConfig, log=None) -> Summary:
    """The whole command: the model file's metadata and the plan first (the flags and the
    inputs' outputs checked before any model work: ``plan`` raises DataError for two
    inputs writing one output), then the engine (a provider that cannot run fails before
    anything is written), skip what exists, run, gallery."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    images.max_pixels()  # a bad $P2P_MAX_IMAGE_PIXELS stops the run before it starts
    max_whole_pixels()  # ... and a bad $P2P_MAX_WHOLE_PIXELS
    if cfg.model is None:  # cli/ picks the default model, and says by which rule
        raise ModelError("no model given: pass --model PATH")
    if any(Path(p).is_file() and (video.is_video_name(p) or video.is_animation(p))
           for p in cfg.inputs):
        video.require_av()  # a missing p2p[video] is one line, before the model loads
    model = Path(cfg.model)
    # What the command line asks for is checked against the model file's metadata (read
    # without a backend) and planned before the engine loads: a --tile-overlap out of range,
    # a --format that cannot hold the outputs, two inputs writing one output are one line
    # each, not a wait for the engine.
    meta = read_metadata(model)
    cfg = replace(cfg, fmt=output_format(cfg.fmt, meta, model))
    if cfg.tile:
        from .tiles import check_tiling

        check_tiling(meta, cfg.tile_overlap, model)
    outputs: list[Path] = []
    jobs, refused = plan(cfg, outputs)
    engine = Engine(model, cfg.provider, cfg.batch_size, cfg.threads, precision=cfg.precision)
    log(f"model {model} ({engine.metadata.direction}, {engine.metadata.image_size}px"
        f"{', dynamic size' if engine.metadata.dynamic_size else ''}) on {engine.describe()}")
    log(f"precision {engine.precision}: {engine.choice.why}")
    for provider, why in engine.passed_over:
        log(f"auto: skipped {provider}: {why}")
    opener = None
    if cfg.tile:
        from .tiles import tile_opener

        opener = tile_opener(engine.metadata, cfg, log)
    if outputs:
        log(f"skipped {len(outputs)} earlier output folder(s) (*{OUTPUT_SUFFIX}), never inputs "
            f"again: {', '.join(map(str, outputs[:3]))}{' ...' if len(outputs) > 3 else ''}")
    summary = Summary(provider=engine.provider, failed=list(refused))
    todo = []
    for job in jobs:
        (todo if cfg.overwrite or not job.dst.exists() else summary.skipped).append(job)
    for root in sorted({j.root for j in todo}):
        files.check_writable(root)
    # Every output folder of the run, those whose outputs are all there too: a killed
    # --overwrite run leaves its temp beside an output that this run skips.
    for folder in {j.dst.parent for j in jobs}:
        files.remove_stale_temps(folder)
    videos = [j for j in todo if j.video]
    if videos:  # PyAV and the codec before any work: one line, not one per video
        from . import videojob

        for suffix in sorted({video.output_suffix(j.src) for j in videos}):
            video.pick_codec(cfg.video_codec, suffix)
    bar = None
    if cfg.progress and todo:
        from tqdm import tqdm

        # One count an image and one a video frame (a video's sink counts its frames but
        # the first, which its job's own count when done is).
        frames = sum(videojob.estimate_frames(j.src) for j in videos)
        bar = tqdm(total=len(todo) - len(videos) + frames, unit="frame" if videos else "img",
                   desc="translate", dynamic_ncols=True)
    if videos:  # frames are pieces of one job, batched with the images' by the same loop
        stats = videojob.VideoStats()
        files_open = opener or file_opener(engine.metadata, cfg, log)
        videos_open = videojob.video_opener(engine.metadata, cfg, stats, bar, log)

        def opener(job):
            return (videos_open if job.video else files_open)(job)
    t0 = time.perf_counter()
    try:
        counts: dict = {}
        results = run_jobs(engine, todo, cfg, bar, log, opener, counts)
        summary.tiles = counts.get("pieces", 0) if cfg.tile else 0
        if bar is not None and bar.n != bar.total:  # a frame count a container did not
            bar.total = bar.n  # state (0: unknown), or frames a failure left out: the run
            bar.refresh()  # is over all the same, so the bar ends at what it counted
    finally:
        if bar:
            bar.close()
        engine.close()
    summary.seconds = time.perf_counter() - t0
    if videos:
        summary.frames, summary.videos = stats.frames, stats.lines
    reasons = {}
    for job, reason in zip(todo, results):
        if reason is None:
            summary.translated.append(job)
        else:
            summary.failed.append((job.src, reason))
            reasons[job.src] = reason
    if cfg.html:
        summary.galleries += gallery.write([j for j in jobs if not j.video], reasons,
                                           engine.metadata, cfg.split)
    return summary
