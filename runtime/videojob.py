"""A video as a job of ``pipeline.run_jobs``: a source of frames and a sink that encodes.

``VideoSource.pieces`` runs in the pipeline's feeder thread: it decodes frames in order and
prepares them (``images.prepare_image``: split, resize, value range) in a small pool of its
own, a bounded window ahead, yielding one ``Piece`` per frame whose ``where`` is the frame's
(pts, Prepared). Batches are formed by the pipeline, across frames and files alike, and run
through the one ``Engine``. ``VideoSink.put`` (the engine thread) only hands each output to
the sink's pool (``images.to_image``: back to the frame's size) and a bounded queue; the
sink's encoder thread writes the frames in order, at their source pts, into a staged temp
file (``files.stage``). ``close`` finishes it and renames it over the target
(``files.publish``): the output appears only when complete. ``abort`` removes the temp file;
a killed run leaves only a hidden temp that the next run removes.

Frames the decoder could not read, or that a file cut short lacks, are left out and named
(``VideoReader.problems``): the frames that were read are still published, as
``<stem>.partial<ext>`` (``video.partial_name``; never the finished name, which a rerun
would skip as done), and ``close`` then raises one ImageError (a first line naming the
partial, the problems indented below), so the job counts as failed (exit 1), on a rerun too.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import files, images
from .errors import ImageError, P2PError, one_line
from .pieces import Piece
from .plan import Job
from .video import VideoReader, output_suffix, partial_name
from .videoenc import VideoWriter, pick_codec

_END = object()


@dataclass
class VideoStats:
    """What the summary says about videos; shared by the sinks (encoder threads)."""

    frames: int = 0
    partial: int = 0  # videos published as <stem>.partial<ext> (frames missing)
    lines: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


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


class VideoSource:
    def __init__(self, reader: VideoReader, meta, cfg, window: int, workers: int, said,
                 log=None):
        self.reader, self.meta, self.cfg = reader, meta, cfg
        self.window, self.workers, self.said, self.log = window, workers, said, log

    def _prep(self, frame):
        where = f"{self.reader.path} (frame at {float(frame.pts * self.reader.time_base):.3f} s)"
        return frame.pts, images.prepare_image(frame.rgb, self.meta, self.cfg.split, where)

    def _piece(self, fut):
        pts, prep = fut.result()
        if prep.half and self.cfg.split == "auto" and self.log and not self.said.is_set():
            self.said.set()
            self.log(images.split_note(prep))
        return Piece(prep.array, (pts, prep))

    def pieces(self):
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="p2p-video-prep") as pool:
                pending: deque = deque()
                for frame in self.reader:
                    pending.append(pool.submit(self._prep, frame))
                    # Hand on every frame prepared so far, and wait only when the window is
                    # full: the engine starts on the first frames instead of after a window
                    # of them (the first batch of a 64-frame clip came ~30 ms later).
                    while pending and (pending[0].done() or len(pending) >= self.window):
                        yield self._piece(pending.popleft())
                while pending:
                    yield self._piece(pending.popleft())
        finally:  # here, in the thread that decodes: never under a decoder at work
            self.reader.close()


class VideoSink:
    def __init__(self, job: Job, reader: VideoReader, meta, cfg, window: int, workers: int,
                 stats: VideoStats, bar=None):
        self.job, self.reader, self.meta, self.cfg = job, reader, meta, cfg
        self.stats, self.bar, self.workers = stats, bar, workers
        self.codec = pick_codec(cfg.video_codec, output_suffix(job.src), cfg.crf)
        self.q: queue.Queue = queue.Queue(window)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.tmp: Path | None = None
        self.writer: VideoWriter | None = None
        self.frames = 0
        self.published = False
        self.pool: ThreadPoolExecutor | None = None
        self.thread: threading.Thread | None = None

    def _finish(self, y, prep) -> np.ndarray:
        # (H, W, 3) uint8 straight from the array (no Pillow image between: a copy less a
        # frame); 1-band models are repeated into grey RGB.
        a = images.to_array(y, prep, self.meta, self.cfg.model_size)
        return images.match_bands(a, 3, self.job.src)

    def _send(self, item) -> None:
        while not self.stop.is_set():
            try:
                return self.q.put(item, timeout=0.1)
            except queue.Full:
                pass
        raise self.error or ImageError(f"{self.job.src}: stopped")

    def put(self, where, y: np.ndarray) -> None:
        if self.thread is None:  # the first frame: the encoder starts
            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="p2p-video-out")
            self.thread = threading.Thread(target=self._encode, name="p2p-video-encode",
                                           daemon=True)
            self.thread.start()
        pts, prep = where
        self._send((pts, self.pool.submit(self._finish, y, prep)))

    def _encode(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    item = self.q.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _END:
                    break
                pts, fut = item
                rgb = fut.result()
                if self.writer is None:
                    h, w = rgb.shape[:2]
                    self.tmp = files.stage(self.job.dst, keep_suffix=True, clean=False)
                    record = self.cfg.record(self.job)
                    self.writer = VideoWriter(self.tmp, output_suffix(self.job.src),
                                              self.reader, (w, h), self.codec, self.cfg.crf,
                                              record.text() if record else None)
                self.writer.write(rgb, pts)
                self.frames += 1
                if self.bar is not None and self.frames > 1:  # the first: the job's own
                    self.bar.update(1)  # count when done (pipeline.run_jobs)
            else:
                return  # aborted
            if self.writer is not None:
                self.writer.finish()
        except BaseException as e:  # handed to close(), in the writer thread
            self.error = e
            self.stop.set()

    def _join(self) -> None:
        if self.thread is not None:
            self.thread.join()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        src = self.job.src
        if self.thread is not None:
            self._send(_END)
        self._join()
        if self.error is not None:
            e = self.error
            if isinstance(e, P2PError):
                raise ImageError(str(e) if str(src) in str(e) else f"{src}: {e}") from None
            raise ImageError(f"{src}: cannot encode: {one_line(e)}") from None
        problems = self.reader.problems()
        if self.writer is None:
            raise ImageError("\n".join(problems) or f"{src}: no video frame in it")
        # Frames missing: published as <stem>.partial<ext>, never under the finished
        # name, so a rerun does not skip the input as done but fails it again.
        partial = self.job.partial or partial_name(self.job.dst)  # plan() sets it
        dst = partial if problems else self.job.dst
        try:
            files.publish(self.tmp, dst, fsync=False)
            # The other of the two is out of date: an earlier run's partial once the input
            # is whole; an earlier finished output once it is not (--overwrite), which a
            # later run would otherwise skip as done.
            (self.job.dst if problems else partial).unlink(missing_ok=True)
        except OSError as e:
            raise ImageError(f"{dst}: cannot write: {e.strerror or e}") from None
        self.published = True
        audio = self.reader.has_audio
        n = f"{self.frames} frame{'' if self.frames == 1 else 's'}"
        with self.stats.lock:
            self.stats.frames += self.frames
            early = self.reader.ends_early()
            self.stats.lines.append(f"{dst}: {n}, {self.codec}"
                                    f"{', audio copied' if audio else ''}"
                                    f"{', PARTIAL (frames missing)' if problems else ''}"
                                    f"{'; ' + early if early else ''}")
            if problems:
                self.stats.partial += 1
        if problems:  # published with the frames that were read; the job still fails
            raise ImageError("\n".join([f"{src}: frames missing; the {n} read are kept in "
                                         f"{dst}:"] + ["  " + p for p in problems]))

    def abort(self) -> None:
        if self.published:
            return
        self.stop.set()
        self._join()
        if self.writer is not None:
            self.writer.close(abort=True)
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


def video_opener(meta, cfg, stats: VideoStats, bar=None, log=None):
    """The opener of video jobs (``pipeline.Opener``): the file is opened (its header read)
    in a reader thread; frames are decoded when the feeder asks for them."""
    workers = cfg.workers or min(4, os.cpu_count() or 1)
    window = 2 * cfg.batch_size + workers
    said = threading.Event()

    def open_job(job: Job):
        # Frames are 8-bit RGB (yuv420p H.264 and kin): a model of other bands or depths
        # has no video to write into. Said before anything is decoded.
        if meta.color_space == "rgb" and (meta.output_depth != "uint8"
                                          or meta.out_channels not in (1, 3)
                                          or meta.in_channels not in (1, 3)):
            raise ImageError(f"{job.src}: a video's frames are 8-bit RGB, and this model takes "
                             f"{meta.in_channels} and writes {meta.out_channels} band(s) of "
                             f"{meta.output_depth}; translate the frames as images instead")
        reader = VideoReader(job.src)
        try:
            sink = VideoSink(job, reader, meta, cfg, window, workers, stats, bar)
        except BaseException:
            reader.close()
            raise
        return VideoSource(reader, meta, cfg, window, workers, said, log), sink

    return open_job
