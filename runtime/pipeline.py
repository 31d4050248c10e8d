"""reader -> batcher -> engine -> writer: what ``p2p-translate`` runs.

Decoding (Pillow releases the GIL) runs in a thread pool ahead of inference; encoding and
the atomic write run in another pool behind it; the engine runs in the calling thread. Both
pools are bounded windows of futures consumed in submission order, so memory stays flat,
outputs pair with their inputs, and results come back in input order. A file that fails to
decode, run or write is recorded with its reason; the run goes on.
"""

from __future__ import annotations

import fnmatch
import os
import re
import sys
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import files, gallery, images, video
from .engine import Engine
from .errors import DataError, ImageError, ModelError, P2PError, one_line


@dataclass(frozen=True)
class TranslateConfig:
    inputs: tuple[Path, ...]
    model: Path | None = None  # required; Optional only to keep the field order
    output: Path | None = None  # None: "<input>-translated" beside each input
    provider: str = "auto"
    batch_size: int = 8
    threads: int | None = None
    precision: str = "auto"  # auto | fp32 | bf16 | int8 (p2p.runtime.precision)
    fmt: str = "png"
    split: str = "auto"
    model_size: bool = False
    glob: str | None = None
    html: bool = False
    overwrite: bool = False
    workers: int | None = None  # decode and encode threads each; None: min(4, CPUs)
    progress: bool = True
    video_codec: str = "auto"  # video outputs: an FFmpeg encoder name (p2p.runtime.video)
    crf: int | None = None  # video outputs: constant quality; None: the codec's default


@dataclass(frozen=True)
class Job:
    src: Path
    dst: Path
    root: Path  # the output folder this job's tree is mirrored into (gallery location)
    video: bool = False  # a video or animation: frames in, a video out (p2p.runtime.videorun)


@dataclass
class Summary:
    provider: str = ""
    translated: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    galleries: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    frames: int = 0  # video frames translated (each counts as an image in the rate)
    videos: list[str] = field(default_factory=list)  # one line per video written

    def lines(self) -> list[str]:
        images_done = sum(1 for j in self.translated if not j.video) + self.frames
        rate = images_done / self.seconds if self.seconds else 0.0
        out = [f"translated {len(self.translated)}, skipped {len(self.skipped)}, "
               f"failed {len(self.failed)} ({rate:.1f} images/s on {self.provider})"]
        out += [f"video: {v}" for v in self.videos]
        out += [f"failed: {line}" for _, reason in self.failed for line in reason.splitlines()]
        out += [f"gallery: {g}" for g in self.galleries]
        return out


def _natural(s: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def scan(folder: Path, pattern: str | None, exclude: Path | None,
         errors: list[OSError] | None = None) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden entries and ``exclude`` skipped), as
    paths relative to it, in natural order (2.jpg before 10.jpg). Links to folders are not
    followed (no cycles); folders that cannot be listed go into ``errors``."""
    found = []
    onerror = None if errors is None else errors.append
    for dirpath, dirs, files in os.walk(folder, onerror=onerror):
        here = Path(dirpath)
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")
                          and (exclude is None or (here / d).resolve() != exclude)), key=_natural)
        for name in sorted(files, key=_natural):
            rel = (here / name).relative_to(folder)
            if name.startswith("."):
                continue
            if pattern is None:
                ok = images.is_image_name(name) or video.is_video_name(name)
            else:
                ok = fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(rel.as_posix(), pattern)
            if ok:
                found.append(rel)
    return found


def default_root(src: Path) -> Path:
    src = src.resolve()
    if not src.name:
        raise DataError(f"cannot name a default output folder for {src}; pass --output")
    return src.parent / f"{src.name if src.is_dir() else src.stem}-translated"


def plan(cfg: TranslateConfig) -> tuple[list[Job], list[tuple[Path, str]]]:
    """Every (input, output) pair in input order, and the inputs refused up front."""
    pairs: list[tuple[Path, Path, Path]] = []  # (src, rel output path without suffix, root)
    refused: list[tuple[Path, str]] = []
    several = len(cfg.inputs) > 1
    for given in cfg.inputs:
        root = Path(cfg.output).resolve() if cfg.output else default_root(given)
        if given.is_dir():
            base = Path(given.resolve().name) if several and cfg.output else Path()
            unlisted: list[OSError] = []
            for rel in scan(given, cfg.glob, exclude=root, errors=unlisted):
                pairs.append((given / rel, base / rel, root))
            refused += [(Path(e.filename), f"{e.filename}: cannot list this folder: "
                         f"{e.strerror or e}") for e in unlisted]
        else:
            pairs.append((given, Path(given.name), root))
    # Outputs are named <stem>.<fmt>, a video's <stem>.<its container> (an animation's .mp4);
    # inputs that would share one keep their suffix in it.
    moving = [video.is_video_name(src) or video.is_animation(src) for src, _, _ in pairs]
    exts = [video.output_suffix(src) if v else "." + cfg.fmt
            for (src, _, _), v in zip(pairs, moving)]
    first = [(root / rel.parent / (rel.stem + ext)) for (_, rel, root), ext in zip(pairs, exts)]
    clash = {d for d, n in Counter(first).items() if n > 1}
    jobs, seen = [], set()
    for (src, rel, root), dst, ext, is_video in zip(pairs, first, exts, moving):
        if dst in clash:
            dst = root / rel.parent / (rel.name + ext)
        try:
            real, src_real = dst.resolve(), src.resolve()
        except (OSError, RuntimeError):  # RuntimeError: Python < 3.13's "Symlink loop"
            refused.append((src, f"{src}: cannot read: a symbolic link loop"))
            continue
        if not real.is_relative_to(root):
            refused.append((src, f"{src}: output path {dst} escapes the output folder {root}"))
        elif real == src_real:
            refused.append((src, f"{src}: the output would overwrite the input itself"))
        elif real in seen:
            refused.append((src, f"{src}: another input already writes {dst}"))
        else:
            seen.add(real)
            jobs.append(Job(src, dst, root, is_video))
    return jobs, refused


# --- running ------------------------------------------------------------------------------

def _prepare(job: Job, meta, split: str):
    return images.prepare(job.src, meta, split)


def _finish(job: Job, prep, y, meta, cfg: TranslateConfig) -> None:
    img = images.to_image(y, prep, meta, cfg.model_size)
    data = images.encode(img, cfg.fmt)
    try:
        # No fsync: a killed process loses nothing that was written; only a power cut could.
        # The folder's stale temps were removed once, before the run (not once per file).
        files.atomic_write(job.dst, lambda tmp: tmp.write_bytes(data), fsync=False, clean=False)
    except P2PError as e:
        raise ImageError(f"{job.src}: {e}") from None


def run_jobs(engine: Engine, jobs: list[Job], cfg: TranslateConfig, bar=None,
             log=None) -> list[str | None]:
    """Translate ``jobs``; returns, in input order, None for success or the failure reason.
    The first automatic A|B split is said through ``log``, once."""
    meta, bs = engine.metadata, engine.batch_size
    workers = cfg.workers or min(4, os.cpu_count() or 1)
    window = 2 * bs + workers  # decoded images waiting for the engine, and outputs waiting to write
    results: list[str | None] = [None] * len(jobs)

    def done(i: int, reason: str | None = None) -> None:
        results[i] = reason
        if bar is not None:
            bar.update(1)

    decoding: deque = deque()
    writing: deque = deque()
    batch: list[tuple[int, object]] = []
    upcoming = iter(range(len(jobs)))
    said_split = False

    def drain(limit: int) -> None:
        while len(writing) > limit:
            i, fut = writing.popleft()
            try:
                fut.result()
                done(i)
            except P2PError as e:
                done(i, str(e))
            except Exception as e:  # an encoder bug must not cost the other outputs
                done(i, f"{jobs[i].src}: cannot encode: {one_line(e)}")

    def infer(items) -> None:
        try:
            ys = engine.run(np.stack([p.array for _, p in items]))
        except Exception as e:
            if len(items) > 1:  # find the one image that fails; the rest still run
                for item in items:
                    infer([item])
                return
            i = items[0][0]
            return done(i, f"{jobs[i].src}: inference failed: {one_line(e)[:300]}")
        for (i, prep), y in zip(items, ys):
            writing.append((i, writers.submit(_finish, jobs[i], prep, y, meta, cfg)))
        drain(window)

    with ThreadPoolExecutor(workers, thread_name_prefix="p2p-decode") as readers, \
            ThreadPoolExecutor(workers, thread_name_prefix="p2p-encode") as writers:
        try:
            while True:
                while len(decoding) < window:  # keep the readers ahead of the engine
                    i = next(upcoming, None)
                    if i is None:
                        break
                    decoding.append((i, readers.submit(_prepare, jobs[i], meta, cfg.split)))
                if not decoding:
                    break
                i, fut = decoding.popleft()
                try:
                    prep = fut.result()
                except P2PError as e:
                    done(i, str(e))
                    continue
                except Exception as e:
                    done(i, f"{jobs[i].src}: cannot decode: {one_line(e)}")
                    continue
                if prep.half and cfg.split == "auto" and not said_split and log:
                    log(images.split_note(prep))
                    said_split = True
                if batch and prep.array.shape != batch[0][1].array.shape:
                    infer(batch)  # dynamic-size models: one batch holds one shape
                    batch = []
                batch.append((i, prep))
                if len(batch) == bs:
                    infer(batch)
                    batch = []
            if batch:
                infer(batch)
            drain(0)
        finally:
            for _, fut in list(decoding) + list(writing):
                fut.cancel()
    return results


def _run_video(engine: Engine, job: Job, cfg: TranslateConfig, bar, log,
               summary: Summary) -> str | None:
    """One video job: None when every frame made it, else the reason(s), one line each.
    Frames that could not be decoded leave a (shorter) output; other failures leave none."""
    from .videorun import run_video

    try:
        r = run_video(engine, job.src, job.dst, cfg, bar, log)
    except P2PError as e:
        return str(e)
    summary.frames += r.frames
    summary.videos.append(f"{job.dst}: {r.frames} frames, {r.codec}"
                          f"{', audio copied' if r.audio else ''}")
    return "\n".join(r.problems) or None


def translate(cfg: TranslateConfig, log=None) -> Summary:
    """The whole command: engine first (a provider that cannot run fails before anything is
    written), then plan, skip what exists, run, gallery."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    images.max_pixels()  # a bad $P2P_MAX_IMAGE_PIXELS stops the run before it starts
    if cfg.model is None:  # cli/ picks the default model, and says by which rule
        raise ModelError("no model given: pass --model PATH")
    if any(Path(p).is_file() and (video.is_video_name(p) or video.is_animation(p))
           for p in cfg.inputs):
        video.require_av()  # a missing p2p[video] is one line, before the model loads
    model = Path(cfg.model)
    engine = Engine(model, cfg.provider, cfg.batch_size, cfg.threads, precision=cfg.precision)
    log(f"model {model} ({engine.metadata.direction}, {engine.metadata.image_size}px"
        f"{', dynamic size' if engine.metadata.dynamic_size else ''}) on {engine.describe()}")
    log(f"precision {engine.precision}: {engine.choice.why}")
    for provider, why in engine.passed_over:
        log(f"auto: skipped {provider}: {why}")
    jobs, refused = plan(cfg)
    summary = Summary(provider=engine.provider, failed=list(refused))
    todo = []
    for job in jobs:
        (todo if cfg.overwrite or not job.dst.exists() else summary.skipped).append(job)
    for root in sorted({j.root for j in todo}):
        files.check_writable(root)
    for folder in {j.dst.parent for j in todo}:
        files.remove_stale_temps(folder)
    stills = [j for j in todo if not j.video]
    videos = [j for j in todo if j.video]
    if videos:  # PyAV and the codec before any work: one line, not one per video
        from . import videorun

        for suffix in sorted({video.output_suffix(j.src) for j in videos}):
            video.pick_codec(cfg.video_codec, suffix)
    bar = None
    if cfg.progress and todo:
        from tqdm import tqdm

        total = len(stills) + sum(videorun.estimate_frames(j.src) or 1 for j in videos)
        bar = tqdm(total=total, unit="img" if not videos else "frame", desc="translate",
                   dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        results = dict(zip(stills, run_jobs(engine, stills, cfg, bar, log)))
        for job in videos:
            results[job] = _run_video(engine, job, cfg, bar, log, summary)
    finally:
        if bar:
            bar.close()
        engine.close()
    summary.seconds = time.perf_counter() - t0
    reasons = {}
    for job in todo:
        reason = results[job]
        if reason is None:
            summary.translated.append(job)
        else:
            summary.failed.append((job.src, reason))
            reasons[job.src] = reason
    if cfg.html:
        summary.galleries += gallery.write([j for j in jobs if not j.video], reasons, engine.metadata, cfg.split)
    return summary
