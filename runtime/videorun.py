"""One video through the engine: decoder thread -> prepare pool -> batches -> engine ->
finish pool -> encoder thread, every hand-over a bounded queue or window.

The shape of ``pipeline.run_jobs`` for frames of one file instead of files: the engine runs
in the calling thread on batches of ``engine.batch_size`` frames; decoding and encoding
(FFmpeg's own threads inside) overlap it, and at most a few batches of frames are in flight
at any time, so memory does not grow with the video's length. The output is written to a
staged temp file and renamed over the target only once it is complete (``files.stage`` /
``files.publish``); on any failure or interruption the temp file is removed (or, after a
kill, removed by the next run), and the target is never a partial video.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from . import files, images
from .engine import Engine
from .errors import ImageError, P2PError, one_line
from .video import VideoReader, VideoWriter, output_suffix, pick_codec

_END = object()


class _Stopped(Exception):
    """Another stage failed: this one stops too."""


@dataclass
class VideoResult:
    frames: int = 0  # frames encoded into the output
    problems: list[str] = field(default_factory=list)  # one line each; empty: all went well
    audio: bool = False
    codec: str = ""


def estimate_frames(path) -> int:
    """The frame count the container states (0 when unknown or unreadable): the progress
    bar's total."""
    try:
        r = VideoReader(path)
    except P2PError:
        return 0
    try:
        return r.frames
    finally:
        r.close()


def run_video(engine: Engine, src, dst, cfg, bar=None, log=None) -> VideoResult:
    """Translate the video ``src`` into ``dst`` (published only when complete). ``cfg``
    is a ``TranslateConfig`` (split, model_size, video_codec, crf, workers). Frames that
    cannot be decoded are skipped and named in ``problems``; anything else that fails
    (no frame decoded, the engine, the encoder, the file system) leaves no output and is
    raised as a P2PError naming ``src``."""
    meta, bs = engine.metadata, engine.batch_size
    workers = cfg.workers or min(4, os.cpu_count() or 1)
    window = 2 * bs + workers
    reader = VideoReader(src)
    result = VideoResult(audio=reader.has_audio and not reader._pil)
    result.codec = pick_codec(cfg.video_codec, output_suffix(src))
    stop = threading.Event()
    errors: list[BaseException] = []
    decoded: queue.Queue = queue.Queue(window)
    encoded: queue.Queue = queue.Queue(window)
    state: dict = {}  # first frame's prepared form (size, half): fixes the output size

    def put(q, item):
        while not stop.is_set():
            try:
                return q.put(item, timeout=0.1)
            except queue.Full:
                pass
        raise _Stopped

    def get(q):
        while not stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                pass
        raise _Stopped

    def guard(fn):
        def body():
            try:
                fn()
            except _Stopped:
                pass
            except BaseException as e:  # handed to the calling thread, which raises it
                errors.append(e)
                stop.set()
        return body

    @guard
    def decode():
        for frame in reader:
            put(decoded, frame)
        put(decoded, _END)

    tmp = files.stage(dst, keep_suffix=True, clean=False)
    writer_box: list[VideoWriter] = []

    @guard
    def encode():
        while (item := get(encoded)) is not _END:
            rgb, pts = item
            if not writer_box:
                h, w = rgb.shape[:2]
                writer_box.append(VideoWriter(tmp, output_suffix(src), reader, (w, h),
                                              result.codec, cfg.crf))
            writer_box[0].write(rgb, pts)
            result.frames += 1
            if bar is not None:
                bar.update(1)
        if writer_box:
            writer_box[0].finish()

    def prep(frame):
        p = images.prepare_image(Image.fromarray(frame.rgb), meta, cfg.split)
        return frame.pts, p

    def finish(y, p):
        return np.asarray(images.to_image(y, p, meta, cfg.model_size).convert("RGB"))

    threads = [threading.Thread(target=decode, name="p2p-video-decode", daemon=True),
               threading.Thread(target=encode, name="p2p-video-encode", daemon=True)]
    for t in threads:
        t.start()
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="p2p-video-prep") as pool:
            pending: deque = deque()  # prepare futures, in frame order
            finishing: deque = deque()  # (pts, finish future), in frame order
            batch: list = []

            def drain(limit):
                while len(finishing) > limit:
                    pts, fut = finishing.popleft()
                    put(encoded, (fut.result(), pts))

            def infer():
                try:
                    ys = engine.run(np.stack([p.array for _, p in batch]))
                except Exception as e:
                    raise ImageError(f"{src}: inference failed: {one_line(e)[:300]}") from None
                for (pts, p), y in zip(batch, ys):
                    finishing.append((pts, pool.submit(finish, y, p)))
                batch.clear()
                drain(window)

            def take():
                pts, p = pending.popleft().result()
                if not state:
                    state["prep"] = p
                    if p.half and cfg.split == "auto" and log:
                        log(images.split_note(p))
                batch.append((pts, p))
                if len(batch) == bs:
                    infer()

            while (frame := get(decoded)) is not _END:
                pending.append(pool.submit(prep, frame))
                if len(pending) >= window:
                    take()
            while pending:
                take()
            if batch:
                infer()
            drain(0)
            put(encoded, _END)
            threads[1].join()
    except _Stopped:
        pass
    except BaseException as e:
        errors.append(e)
    finally:
        if errors:
            stop.set()
        for t in threads:
            t.join()
        reader.close()
        if errors or not writer_box:
            if writer_box:
                writer_box[0].close(abort=True)
            tmp.unlink(missing_ok=True)
    if errors:
        e = errors[0]
        if isinstance(e, P2PError):
            raise ImageError(str(e) if str(src) in str(e) else f"{src}: {e}") from None
        if isinstance(e, (KeyboardInterrupt, SystemExit, MemoryError)):
            raise e
        raise ImageError(f"{src}: {one_line(e)}") from None
    result.problems = reader.problems()
    if not writer_box:
        raise ImageError("; ".join(result.problems) if result.problems
                         else f"{src}: no video frame in it")
    try:
        files.publish(tmp, dst, fsync=False)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ImageError(f"{dst}: cannot write: {e.strerror or e}") from None
    return result
