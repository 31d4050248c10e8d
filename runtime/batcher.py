"""Micro-batching for ``p2p-serve``: concurrent requests share one engine batch.

A convolutional generator costs far less per image in a batch of 8 than alone, yet HTTP
clients send one image each. Each request's array goes into a queue; one batcher task takes
the first waiting array, then gathers more until ``max_batch`` or until ``max_wait`` has
passed since the first, and runs them as one ``engine.run`` in a worker thread so the event
loop keeps answering. While the engine is busy, new requests pile up and the next batch
forms at once: batches grow with load by themselves, and at low load a lone request waits
at most ``max_wait``.

Admission is counted from the moment a request is accepted (before its image is decoded)
until it enters a batch, so ``max_queue`` bounds the decoded arrays held in memory too.
A batch that fails is retried one image at a time, so one bad input fails alone. A request
that timed out while queued is dropped before it costs any inference.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import one_line

log = logging.getLogger("p2p.serve")


class QueueFull(Exception):
    """The batcher already holds ``max_queue`` requests: answer 503 and ask to retry."""


class InferenceError(Exception):
    """The engine failed on this one input (after being retried alone)."""


class ShuttingDown(Exception):
    """The server stopped before this request ran."""


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future


class MicroBatcher:
    """``run`` maps an (N, C, H, W) array to (N, ...) outputs; it runs in one worker thread
    (engines are not re-entrant, and one batch at a time uses every core anyway).
    ``on_batch(size, seconds)`` is called on the event loop after each engine call."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], max_batch: int = 16,
                 max_wait_s: float = 0.005, max_queue: int = 64,
                 on_batch: Callable[[int, float], None] | None = None):
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_s >= 0")
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch or (lambda size, seconds: None)
        self.waiting = 0  # admitted and not yet in a batch (decoding or queued)
        self.last_batch_s = 0.0
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._pool: ThreadPoolExecutor | None = None

    # --- lifecycle (call from the event loop) -------------------------------------------------

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="p2p-engine")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="p2p-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue is not None and not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(ShuttingDown("server is shutting down"))
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # --- requests -----------------------------------------------------------------------------

    def admit(self) -> None:
        """Take a place in the queue or raise ``QueueFull``. Follow with ``submit`` or
        ``release``: every admitted request leaves exactly once."""
        if self.waiting >= self.max_queue:
            raise QueueFull(f"queue full ({self.waiting} requests waiting, --max-queue "
                            f"{self.max_queue}); retry later")
        self.waiting += 1

    def release(self) -> None:
        """An admitted request leaves before ``submit`` (bad image, timeout while decoding)."""
        self.waiting -= 1

    async def submit(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """Run one (C, H, W) array in the next batch; returns (output, size of its batch).
        Cancelling the caller (a timeout) drops the array if it has not run yet."""
        if self._task is None or self._task.done():
            self.release()
            raise ShuttingDown("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(x, future))  # no await before this: admission is exact
        return await future

    # --- the batcher task ---------------------------------------------------------------------

    async def _gather(self) -> list[_Item]:
        loop = asyncio.get_running_loop()
        items = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(items) < self.max_batch:
            try:
                items.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:  # an item that arrives as wait_for times out is still returned, not lost
                items.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return items

    async def _loop(self) -> None:
        while True:
            items = await self._gather()
            self.waiting -= len(items)
            live = [it for it in items if not it.future.done()]  # timed out: not worth running
            # Dynamic-size models: one engine batch holds one shape, so group by it.
            groups: dict[tuple, list[_Item]] = {}
            for it in live:
                groups.setdefault(it.x.shape, []).append(it)
            for group in groups.values():
                try:
                    await self._run(group)
                except asyncio.CancelledError:
                    for it in group:
                        if not it.future.done():
                            it.future.set_exception(ShuttingDown("server is shutting down"))
                    raise
                except Exception as e:  # never let the batcher die: every request would hang
                    log.exception("batcher: unexpected error")
                    for it in group:
                        if not it.future.done():
                            it.future.set_exception(InferenceError(f"internal error: {e}"))

    async def _run(self, group: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        xs = [it.x for it in group]

        def work():  # stacking copies megabytes: keep it off the event loop too
            t0 = time.perf_counter()
            y = self.run(np.stack(xs))
            return y, time.perf_counter() - t0

        try:
            y, seconds = await loop.run_in_executor(self._pool, work)
        except Exception as e:
            if len(group) > 1:  # find the input that fails; the others still get answers
                for it in group:
                    await self._run([it])
                return
            reason = one_line(e)[:300]
            if not group[0].future.done():
                group[0].future.set_exception(InferenceError(f"inference failed: {reason}"))
            return
        self.last_batch_s = seconds
        self.on_batch(len(group), seconds)
        for it, out in zip(group, y):
            if not it.future.done():
                it.future.set_result((out, len(group)))
