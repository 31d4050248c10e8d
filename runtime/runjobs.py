"""The loop of ``p2p-translate``: ``run_jobs`` runs opened jobs' pieces through one ``Engine``
(the interface of sources, sinks and pieces is in ``p2p.runtime.pipeline``'s docstring).

Threads: reader threads open jobs ahead; one feeder thread walks them in input order and
queues their pieces; the calling thread gathers batches of one shape across jobs, keeps one
batch running on the engine (``Engine.submit``) while it gathers the next, and hands each
output to its job's sink in piece order; writer threads close the sinks. Every queue is
bounded (about 2 x batch + workers items).
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .engine import Engine
from .errors import P2PError, one_line
from .pieces import Opener, Piece, file_opener
from .plan import Job

_END = object()  # the feeder's marker after a job's last piece
IN_FLIGHT = 1  # batches left running on the engine while the next one is gathered


@dataclass
class _State:  # one job in flight, seen only by the engine thread
    sink: Any
    pending: int = 0  # pieces queued or batched whose output has not been put yet
    ended: bool = False  # the source has no more pieces
    failed: bool = False


def run_jobs(engine: Engine, jobs: list[Job], cfg, bar=None,
             log=None, opener: Opener | None = None,
             counts: dict | None = None) -> list[str | None]:
    """Translate ``jobs``; returns, in input order, None for success or the failure reason.

    Reader threads open jobs ahead (``opener``, default ``file_opener``); one feeder thread
    walks the opened jobs in order and queues their pieces; the calling thread batches
    pieces of one shape (across jobs), runs the engine and hands outputs to each job's sink;
    writer threads close sinks. Every queue is bounded, so memory stays flat. ``counts``,
    when given, gets ``pieces``: how many pieces ran through the engine, and ``frames``: how
many of them were video frames. ``cfg``: a
    ``pipeline.TranslateConfig`` (``workers``, and what the default opener reads)."""
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
                    frames = sum(1 for i, _ in items if jobs[i].video)
                    counts["frames"] = counts.get("frames", 0) + frames
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
