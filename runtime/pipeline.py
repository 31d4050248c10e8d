"""reader -> batcher -> engine -> writer: what ``p2p-translate`` runs.

Decoding (Pillow releases the GIL) runs in a thread pool ahead of inference; encoding and
the atomic write run in another pool behind it; the engine runs in the calling thread. Both
pools are bounded windows of futures consumed in submission order, so memory stays flat,
outputs pair with their inputs, and results come back in input order. A file that fails to
decode, run or write is recorded with its reason; the run goes on.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import files, gallery, images, listing
from .engine import Engine
from .listing import list_images
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
    fmt: str | None = None  # None: images.default_format (png, tif for float/N-band models)
    split: str = "auto"
    model_size: bool = False
    glob: str | None = None
    html: bool = False
    overwrite: bool = False
    workers: int | None = None  # decode and encode threads each; None: min(4, CPUs)
    progress: bool = True


@dataclass(frozen=True)
class Job:
    src: Path
    dst: Path
    root: Path  # the output folder this job's tree is mirrored into (gallery location)


@dataclass
class Summary:
    provider: str = ""
    translated: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    galleries: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        rate = len(self.translated) / self.seconds if self.seconds else 0.0
        out = [f"translated {len(self.translated)}, skipped {len(self.skipped)}, "
               f"failed {len(self.failed)} ({rate:.1f} images/s on {self.provider})"]
        out += [f"failed: {reason}" for _, reason in self.failed]
        out += [f"gallery: {g}" for g in self.galleries]
        return out


def _natural(s: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


OUTPUT_SUFFIX = "-translated"  # default output folders: <input>-translated


def is_output_folder(name: str) -> bool:
    """Whether a folder name is one p2p-translate writes by default (``<name>-translated``)."""
    return name.endswith(OUTPUT_SUFFIX)


def scan(folder: Path, pattern: str | None, exclude: Path | None,
         errors: list[OSError] | None = None,
         outputs: list[Path] | None = None) -> list[Path]:
    """Image files under ``folder`` (``listing.list_images``: recursive, hidden entries and
    ``exclude`` skipped), or the names ``pattern`` matches (``listing.matches``), as paths
    relative to it, in natural order (2.jpg before 10.jpg; a folder's files before its
    subfolders'). Subfolders named ``*-translated`` are earlier outputs, never inputs again:
    skipped, and listed in ``outputs``."""
    found = list_images(folder, True, errors, lambda name, rel: listing.matches(rel, pattern),
                        exclude, skip_dir=is_output_folder, skipped=outputs)
    return sorted(found, key=lambda r: ([_natural(p) for p in r.parts[:-1]], _natural(r.name)))


def default_root(src: Path, several: bool = False) -> Path:
    """``<folder>-translated`` beside an input folder; for a file given alone
    ``<stem>-translated`` beside it, and for one of several inputs (``dir/*.jpg``) its
    folder's ``<folder>-translated`` beside that folder, so the files of one folder share
    one output folder and none is written inside the input folder."""
    src = src.resolve()
    if several and not src.is_dir():
        src = src.parent
    if not src.name:
        raise DataError(f"cannot name a default output folder for {src}; pass --output")
    return src.parent / f"{src.name if src.is_dir() else src.stem}{OUTPUT_SUFFIX}"


def plan(cfg: TranslateConfig,
         outputs: list[Path] | None = None) -> tuple[list[Job], list[tuple[Path, str]]]:
    """Every (input, output) pair in input order, and the inputs refused up front; earlier
    output folders found inside input folders (skipped) go into ``outputs``."""
    pairs: list[tuple[Path, Path, Path]] = []  # (src, rel output path without suffix, root)
    refused: list[tuple[Path, str]] = []
    several = len(cfg.inputs) > 1
    for given in cfg.inputs:
        root = Path(cfg.output).resolve() if cfg.output else default_root(given, several)
        if given.is_dir():
            base = Path(given.resolve().name) if several and cfg.output else Path()
            unlisted: list[OSError] = []
            for rel in scan(given, cfg.glob, exclude=root, errors=unlisted, outputs=outputs):
                pairs.append((given / rel, base / rel, root))
            refused += [(Path(e.filename), f"{e.filename}: cannot list this folder: "
                         f"{e.strerror or e}") for e in unlisted]
        else:
            pairs.append((given, Path(given.name), root))
    # Outputs are named <stem>.<fmt>; inputs that would share one keep their suffix in it.
    ext = "." + cfg.fmt
    first = [(root / rel.parent / (rel.stem + ext)) for _, rel, root in pairs]
    clash = {d for d, n in Counter(first).items() if n > 1}
    jobs, seen = [], set()
    for (src, rel, root), dst in zip(pairs, first):
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
            jobs.append(Job(src, dst, root))
    return jobs, refused


# --- running ------------------------------------------------------------------------------

def _prepare(job: Job, meta, split: str):
    return images.prepare(job.src, meta, split)


def _finish(job: Job, prep, y, meta, cfg: TranslateConfig) -> None:
    data = images.encode(images.to_array(y, prep, meta, cfg.model_size), cfg.fmt)
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
    """The whole command: engine first (a provider that cannot run fails before anything is
    written), then plan, skip what exists, run, gallery."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    images.max_pixels()  # a bad $P2P_MAX_IMAGE_PIXELS stops the run before it starts
    if cfg.model is None:  # cli/ picks the default model, and says by which rule
        raise ModelError("no model given: pass --model PATH")
    model = Path(cfg.model)
    engine = Engine(model, cfg.provider, cfg.batch_size, cfg.threads, precision=cfg.precision)
    log(f"model {model} ({engine.metadata.direction}, {engine.metadata.image_size}px"
        f"{', dynamic size' if engine.metadata.dynamic_size else ''}) on {engine.describe()}")
    log(f"precision {engine.precision}: {engine.choice.why}")
    for provider, why in engine.passed_over:
        log(f"auto: skipped {provider}: {why}")
    cfg = replace(cfg, fmt=output_format(cfg.fmt, engine.metadata, model))
    outputs: list[Path] = []
    jobs, refused = plan(cfg, outputs)
    if outputs:
        log(f"skipped {len(outputs)} earlier output folder(s) (*{OUTPUT_SUFFIX}), never inputs "
            f"again: {', '.join(map(str, outputs[:3]))}{' ...' if len(outputs) > 3 else ''}")
    summary = Summary(provider=engine.provider, failed=list(refused))
    todo = []
    for job in jobs:
        (todo if cfg.overwrite or not job.dst.exists() else summary.skipped).append(job)
    for root in sorted({j.root for j in todo}):
        files.check_writable(root)
    for folder in {j.dst.parent for j in todo}:
        files.remove_stale_temps(folder)
    bar = None
    if cfg.progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="img", desc="translate", dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        results = run_jobs(engine, todo, cfg, bar, log)
    finally:
        if bar:
            bar.close()
        engine.close()
    summary.seconds = time.perf_counter() - t0
    reasons = {}
    for job, reason in zip(todo, results):
        if reason is None:
            summary.translated.append(job)
        else:
            summary.failed.append((job.src, reason))
            reasons[job.src] = reason
    if cfg.html:
        summary.galleries += gallery.write(jobs, reasons, engine.metadata, cfg.split)
    return summary
