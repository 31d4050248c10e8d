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
(``p2p.runtime.tiles``); a video one piece per frame (``p2p.runtime.videojob``).
``run_jobs(engine, jobs, cfg, opener=...)`` (``p2p.runtime.runjobs``, importable from here)
runs any of them: reader threads open jobs ahead, one feeder thread
walks the opened jobs in input order and queues their pieces, the calling thread batches
pieces of one shape (across jobs) through ``Engine.submit`` (one batch left running on the
engine while the next is gathered: the engine never waits on this thread) and hands each
output to its job's sink, writer threads close the sinks. Every queue is bounded (about
2 x batch + workers items), so memory stays flat whatever the number of inputs; results come back in input
order. A job that fails to open, read, run or write is recorded with its reason (its sink
aborted); the run goes on.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import files, gallery, images, provenance, video
from .engine import Engine
from .errors import ModelError, P2PError
from .modelfile import read_metadata
from .pieces import (FileSink, FileSource, Opener, Piece, Sink, Source,  # noqa: F401  (public here)
                     file_opener, max_whole_pixels, write_bytes)
from .plan import OUTPUT_SUFFIX, Job, default_root, plan, scan  # noqa: F401  (scan: public here too)
from .runjobs import IN_FLIGHT, run_jobs  # noqa: F401  (public here too)


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
    # Set by translate(), not by the command line: what makes this run's outputs (Makers),
    # the record each output carries (None: they carry none).
    makers: "Makers | None" = None

    def record(self, job: Job):
        """The provenance record for ``job``'s output (None: the run keeps none)."""
        return None if self.makers is None else self.makers.maker(job).record((job.src,))


class Makers:
    """What makes this run's outputs (``provenance.Maker``): the model's id and, per input,
    the settings that change its pixels as they resolve for it: the half ``--split``
    picks (``auto`` read from the header, or a video's first frame: the same pair as an
    explicit ``right``), the size, ``--tile`` and its overlap for images; the encoder and
    CRF ``auto`` and the defaults resolve to for videos (``--tile`` tiles images only)."""

    def __init__(self, cfg: "TranslateConfig", meta, model: Path, overlap: int | None):
        self.cfg, self.meta, self.overlap = cfg, meta, overlap
        self.by, self.label = provenance.model_id(meta, model), Path(model).name
        self._codecs: dict[str, tuple[str, object]] = {}

    def codec(self, suffix: str) -> tuple[str, object]:
        """(encoder, CRF) a video output of ``suffix`` is written with."""
        if suffix not in self._codecs:
            from .videoenc import CRF_DEFAULT, pick_codec

            codec = pick_codec(self.cfg.video_codec, suffix, self.cfg.crf)
            crf = self.cfg.crf if self.cfg.crf is not None else CRF_DEFAULT.get(codec, "none")
            self._codecs[suffix] = (codec, crf)
        return self._codecs[suffix]

    def maker(self, job: Job) -> provenance.Maker:
        cfg = self.cfg
        size = "model" if cfg.model_size else "input"
        if job.video:
            codec, crf = self.codec(video.output_suffix(job.src))
            settings = provenance.settings(
                split=effective_split(job.src, cfg.split, self.meta, moving=True), size=size,
                codec=codec, crf=crf)
        else:
            settings = provenance.settings(
                split=effective_split(job.src, cfg.split, self.meta), size=size,
                tile=self.overlap if cfg.tile else "none")
        return provenance.Maker("translate", self.by, settings, "model", self.label)


def effective_split(src: Path, split: str, meta, moving: bool = False) -> str:
    """The half ``split`` takes of ``src`` ('left', 'right', 'none'), ``auto`` resolved from
    the file's header (upright size, as the decoder sees it), or for a video or animation
    (``moving``) from its first frame (upright); ``split`` itself when that cannot be read
    (the decoder names the problem, if any)."""
    if split != "auto":
        return split
    from PIL import Image

    try:
        images.check_regular_file(src)
        if moving:
            reader = video.VideoReader(src)
            try:
                first = next(iter(reader), None)
            finally:
                reader.close()
            if first is None:
                return split
            h, w = first.rgb.shape[:2]
        else:
            with Image.open(src) as im:
                w, h = im.size
                if images.orientation(im) in (5, 6, 7, 8):  # stored on its side
                    w, h = h, w
    except Exception:  # noqa: BLE001
        return split
    return images.choose_half((w, h), split, meta) or "none"


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
    partial: int = 0  # failed videos whose frames that were read are kept (*.partial.*)

    def lines(self) -> list[str]:
        done = sum(1 for j in self.translated if not j.video) + self.frames
        rate = done / self.seconds if self.seconds else 0.0
        # --tile: one image may be thousands of tiles; the tile rate is the one to read
        tiles = (f"{rate:.2f} images/s, {self.tiles / self.seconds:.1f} tiles/s"
                 if self.tiles and self.seconds else f"{rate:.1f} images/s")
        kept = f", partial videos kept {self.partial}" if self.partial else ""
        out = [f"translated {len(self.translated)}, skipped {len(self.skipped)}, "
               f"failed {len(self.failed)}{kept} ({tiles} on {self.provider})"]
        out += [f"video: {v}" for v in self.videos]
        # One entry a failure: its first line says which input, lines after it are indented.
        for _, reason in self.failed:
            first, *rest = reason.splitlines() or [""]
            out += [f"failed: {first}"] + [f"  {r.strip()}" for r in rest]
        out += [f"gallery: {g}" for g in self.galleries]
        return out


# --- the command ----------------------------------------------------------------------------

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
    overlap = None
    if cfg.tile:
        from .tiles import check_tiling

        overlap = check_tiling(meta, cfg.tile_overlap, model)
    cfg = replace(cfg, makers=Makers(cfg, meta, model, overlap))
    outputs: list[Path] = []
    jobs, refused = plan(cfg, outputs)
    for root in sorted({j.root for j in jobs if not j.root.is_dir()}):
        files.check_creatable(root)  # a file in the way is one line before the engine loads
    # Existing outputs are skipped as done only when this input, this model and these
    # settings made them (their provenance record): others are refused before the model
    # loads, never passed off as this run's. Something not a file at an output's path
    # fails that input now (never opened, never skipped as done).
    todo, skipped, blocked = [], [], set()
    for job in jobs:
        if (why := provenance.in_the_way(job.dst)) is not None:
            refused.append((job.src, f"{job.src}: cannot write {job.dst}: {why}"))
            blocked.add(id(job))
        elif cfg.overwrite or not job.dst.exists() or provenance.unreadable(job.src):
            todo.append(job)  # (an unreadable input runs: the decoder names its problem)
        else:
            skipped.append(job)
    jobs = [j for j in jobs if id(j) not in blocked]
    provenance.refuse([(j.dst, why) for j in skipped
                       if (why := cfg.makers.maker(j).made_elsewhere(j.dst, (j.src,)))],
                      "this input, model and settings")
    moving = [j for j in jobs if j.video]
    # PyAV and the encoder before the model loads: a codec that cannot encode these
    # frames (or a --crf it lacks) is one line, not one failure per video.
    for suffix in sorted({video.output_suffix(j.src) for j in moving}):
        cfg.makers.codec(suffix)  # videoenc.pick_codec, remembered for the records
    engine = Engine(model, cfg.provider, cfg.batch_size, cfg.threads, precision=cfg.precision)
    log(f"model {model} ({engine.metadata.direction}, {engine.metadata.image_size}px"
        f"{', dynamic size' if engine.metadata.dynamic_size else ''}) on {engine.describe()}")
    log(f"precision {engine.precision}: {engine.choice.why}")
    for provider, why in engine.passed_over:
        log(f"auto: skipped {provider}: {why}")
    if outputs:
        log(f"skipped {len(outputs)} earlier output folder(s) (*{OUTPUT_SUFFIX}), never inputs "
            f"again: {', '.join(map(str, outputs[:3]))}{' ...' if len(outputs) > 3 else ''}")
    summary = Summary(provider=engine.provider, skipped=skipped, failed=list(refused))
    for root in sorted({j.root for j in todo}):
        files.check_writable(root)
    # Every output folder of the run, those whose outputs are all there too: a killed
    # --overwrite run leaves its temp beside an output that this run skips.
    for folder in {j.dst.parent for j in jobs}:
        files.remove_stale_temps(folder)
    videos = [j for j in todo if j.video]
    if videos:
        from . import videojob
    opener = None
    if cfg.tile and moving:  # frames run whole, resized to the model's size, as without it
        log(f"note: --tile tiles images only; the frames of {len(moving)} video(s) are "
            "not tiled")
    if cfg.tile and len(todo) > len(videos):
        from .tiles import tile_opener

        opener = tile_opener(engine.metadata, cfg, log)
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
        # Tiles of images only: a video frame is one piece but no tile.
        summary.tiles = (counts.get("pieces", 0) - counts.get("frames", 0)) if cfg.tile else 0
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
        summary.partial = stats.partial
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
