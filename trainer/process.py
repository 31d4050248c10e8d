"""Dataset tools behind ``p2p-process``: turn a folder of your own photos into pix2pix pairs.

The operations follow pix2pix-tensorflow's ``tools/process.py`` and ``tools/split.py`` and
junyanz's ``combine_A_and_B.py``:

    resize     square by centre crop (or by padding with white, ``pad=True``), then resize:
               bicubic for photos, nearest-neighbour for label maps (``resample``)
    grayscale  one-channel luminance (Pillow's ITU-R 601-2 ``L``)
    edges      black-on-white Canny edges, for edges->photo pairs like the edges2* sets
    blank      a white centre rectangle (half width x half height; a square on square
               images), for inpainting pairs
    combine    same-named A and B images side by side, A|B (the layout ``p2p-train`` reads)
    split      deterministic train/ val/ test/ subfolders (files copied, never moved), or
               with ``halves=True`` each A|B image cut into A/ and B/ (the inverse of combine)

Images are read and written at their own depth (8-bit, 16-bit, float; TIFF sources stay
TIFF, for float and N-band data). Every generated image is written as PNG (lossless: edges
and blanks must not grow JPEG ringing; no colour profile: pixels are sRGB after decoding)
or TIFF under the same relative path as its source; ``split`` copies files byte for byte.
The output folder may neither be, nor lie inside, an input (nor the other way round), so
the tools never write into their input. Existing outputs are skipped unless ``overwrite``,
and only when this run would have made them (the provenance record every generated image
carries: its sources and the operation with its settings; ``split``'s copies: the same
bytes); one made from other inputs or settings refuses the run in one line. A bad file is
recorded and the run goes on; each write is atomic (temp file + rename).

The operations themselves are ``p2p.trainer.imageops`` (re-exported here). This module must
stay torch-free (``p2p.trainer`` has an empty ``__init__``), and OpenCV is imported only by
``edges`` so every other operation works without the ``process`` extra.
"""

from __future__ import annotations

import os
import random
import shutil
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from p2p.runtime import images, listing, provenance
from p2p.runtime.errors import DataError, P2PError, choices, one_line
from p2p.runtime.files import atomic_write, check_writable
from p2p.runtime.images import SHOWN_EXTS
from p2p.runtime.plan import output_names

from .imageops import (LABEL_MAP_COLOURS, LABEL_MAP_TEXTURE, PER_IMAGE,  # noqa: F401
                       _cv2, blank, combine, edges, grayscale, is_label_map,
                       resize)  # (public here too)

OPS = ("resize", "combine", "split", "grayscale", "edges", "blank")
RESAMPLES = ("auto", "bicubic", "nearest")
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class ProcessConfig:
    op: str
    output: Path
    input: Path | None = None  # every op but combine
    a: Path | None = None  # combine only
    b: Path | None = None
    size: int = 256  # resize
    pad: bool = False  # resize: pad to square with white instead of centre-cropping
    resample: str = "auto"  # resize: auto | bicubic | nearest (RESAMPLES)
    ratios: tuple[float, ...] = (0.8, 0.1, 0.1)  # split: train, val[, test]
    seed: int = 0  # split
    halves: bool = False  # split: A|B images -> A/ and B/ instead of train/ val/ test/
    workers: int = 0  # 0: os.cpu_count()
    overwrite: bool = False
    progress: bool = True


@dataclass
class Report:
    written: int = 0
    nearest: list[str] = field(default_factory=list)  # resize: label maps, nearest-neighbour
    skipped: int = 0  # outputs that already existed
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, one-line reason)


# ---------------------------------------------------------------------------- checks


def validate(cfg: ProcessConfig) -> None:
    """Refuse a config that could lose data or cannot work, before any file is touched."""
    if cfg.op not in OPS:
        raise DataError(f"unknown operation {cfg.op!r}; allowed: {choices(OPS)}")
    inputs = [cfg.a, cfg.b] if cfg.op == "combine" else [cfg.input]
    if any(p is None for p in inputs):
        need = "--a DIR and --b DIR" if cfg.op == "combine" else "--input DIR"
        raise DataError(f"{cfg.op} needs {need}")
    out = Path(cfg.output).resolve()
    for src in inputs:
        if not Path(src).is_dir():
            raise DataError(f"{src}: no such input folder")
        src = Path(src).resolve()
        # Either containment loses data: output inside input writes into the input; input
        # inside output lets a mirrored relative path land back in the input.
        if out == src or src in out.parents or out in src.parents:
            raise DataError(f"output {cfg.output} must not be or contain the input {src}, nor lie "
                            "inside it: choose a separate folder")
    if cfg.op == "resize" and cfg.size < 1:
        raise DataError(f"--size {cfg.size}: must be a positive number of pixels")
    if cfg.resample not in RESAMPLES:
        raise DataError(f"--resample {cfg.resample}: allowed: {choices(RESAMPLES)}")
    if cfg.op == "split":
        check_ratios(cfg.ratios)
    if cfg.workers < 0:
        raise DataError(f"--workers {cfg.workers}: must be >= 0 (0 = one per CPU)")


def check_ratios(ratios) -> tuple[float, ...]:
    r = tuple(float(x) for x in ratios)
    # Written so that NaN fails it (every comparison with NaN is False).
    if len(r) not in (2, 3) or not all(x >= 0 for x in r) or not abs(sum(r) - 1.0) <= 1e-6:
        raise DataError(f"--ratios {','.join(f'{x:g}' for x in r)}: need 2 or 3 non-negative "
                        "numbers (train,val[,test]) that sum to 1, e.g. 0.8,0.1,0.1")
    return r


def list_images(root: Path, report: Report | None = None) -> list[Path]:
    """``listing.list_images`` (recursive, sorted relative paths, hidden entries such as our
    own temp files skipped, image-named non-files kept so they are reported, not dropped);
    folders that cannot be listed go into ``report``."""
    unlisted: list[OSError] = []
    found = listing.list_images(root, errors=unlisted)
    if report is not None:
        report.failed += [(str(e.filename), f"cannot list this folder: {e.strerror or e}")
                          for e in unlisted]
    return found


# ---------------------------------------------------------------------------- image I/O


def load(path: Path) -> np.ndarray:
    """p2p-translate's decoder, so a dataset is made from images exactly as the model will
    see them: decoded fully at their own depth (8-bit, 16-bit, float 0..1; 1, 3 or N bands;
    a truncated file fails here), EXIF orientation applied, colour profile converted to
    sRGB, alpha composited on white, the $P2P_MAX_IMAGE_PIXELS bomb limit, and no FIFO ever
    opened. (H, W, C); failures are ``ImageError`` lines naming the file."""
    return images.decode(path)


def save(a: np.ndarray, path: Path, record: provenance.Record | None = None) -> None:
    """``images.encode`` in the format the name says (.png: 8/16-bit, 1 or 3 bands; .tif:
    anything), with ``record`` (which sources and operation made it) inside. No colour
    profile is written: the pixels are sRGB (``images.decode``), and a profile copied from
    an RGB source onto a greyscale PNG is one libpng rejects."""
    data = images.encode(a, "tif" if path.suffix == ".tif" else "png", record)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


# ---------------------------------------------------------------------------- planning


def _tif_or_png(src: Path) -> str:
    """An output's extension: ``.tif`` for TIFF sources (16-bit or float colour, N bands),
    else ``.png``."""
    return ".tif" if src.suffix.lower() in (".tif", ".tiff") else ".png"


def _targets(rels: list[Path], src_root: Path, report: Report, shown,
             suffix=_tif_or_png) -> list[tuple[Path, Path]]:
    """(source rel, output rel) by p2p-translate's naming rule (``plan.output_names``:
    ``<stem><suffix>``; ``<name><suffix>`` where another image of the source folder would
    give that name too, ``x.jpg.png`` and ``x.png.png``). Two sources that still share an
    output (``x.png`` beside ``x.jpg`` and ``x.png.png``) fail the second, never a silent
    overwrite; ``shown(out_rel)`` names the real output path(s)."""
    names = output_names([src_root / rel for rel in rels], suffix)
    seen: dict[Path, Path] = {}
    jobs = []
    for rel, name in zip(rels, names):
        dst = rel.parent / name
        if dst in seen:
            report.failed.append((str(src_root / rel), f"same output {shown(dst)} as "
                                  f"{src_root / seen[dst]}; rename one of them"))
            continue
        seen[dst] = rel
        jobs.append((rel, dst))
    return jobs


def split_assignment(rels: list[Path], ratios, seed: int) -> dict[str, list[Path]]:
    """Sorted names shuffled by ``seed``, cut at the rounded cumulative ratios: the same
    names, ratios and seed always give the same split, whatever the file system's order."""
    ratios = check_ratios(ratios)
    names = sorted(rels, key=lambda r: r.as_posix())
    random.Random(seed).shuffle(names)
    n, cuts, acc = len(names), [0], 0.0
    for r in ratios:
        acc += r
        cuts.append(min(n, round(n * acc)))
    cuts[-1] = n
    return {SPLIT_NAMES[i]: names[cuts[i]:cuts[i + 1]] for i in range(len(ratios))}


def save_halves(src: Path, out: Path, rel: Path, maker: provenance.Maker) -> None:
    """An A|B image (exactly 2:1, the rule of every command) as ``out/A/rel`` and
    ``out/B/rel``; any other shape is a DataError naming it."""
    record = maker.record((src,))
    a = load(src)
    problem = images.ab_pair_problem(src, (a.shape[1], a.shape[0]))
    if problem:
        raise DataError(problem)
    # B first: A/rel is what marks the job done, so a run killed in between redoes it.
    for side, half in (("B", "right"), ("A", "left")):
        save(images.crop_half(a, half), out / side / rel, record)


def check_earlier_split(out: Path, assignment: dict[str, list[Path]]) -> None:
    """DataError when ``out`` holds one of these images in another split folder than this
    split puts it (an earlier split with other --ratios or --seed): it would then be in two
    splits, a held-out image trained on; --overwrite cannot fix that, so it is refused even
    then."""
    stale = [(out / other / rel, part) for part, chosen in assignment.items()
             for rel in chosen for other in SPLIT_NAMES
             if other != part and (out / other / rel).exists()]
    if stale:
        (path, part), n = stale[0], len(stale)
        more = f" (and {n - 1} more)" if n > 1 else ""
        raise DataError(f"{path}: an earlier split (other --ratios or --seed, or other images "
                        f"in the input) put this image there; this one puts it in {part}/"
                        f"{more}: it would be in two splits, a held-out image trained on; "
                        "give another --output")


def _copy_checked(src: Path, dst: Path) -> None:
    load(src)  # a file that does not decode would only fail later, inside training
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def operation(cfg: ProcessConfig) -> provenance.Maker | None:
    """What makes ``cfg``'s outputs (``provenance.Maker``: the operation and the settings
    that change its pixels); None for ``split``'s copies (an output is its source's bytes,
    compared by content)."""
    if cfg.op == "split" and not cfg.halves:
        return None
    name = "split --halves" if cfg.op == "split" else cfg.op
    settings = provenance.settings(size=cfg.size, pad=cfg.pad, resample=cfg.resample) \
        if cfg.op == "resize" else ""
    return provenance.Maker("process", provenance.digest(name), settings, "operation", name)


def plan(cfg: ProcessConfig, report: Report) -> list[tuple[str, Path, object, tuple]]:
    """(name shown on failure, destination, zero-argument work function, its sources) for
    every output."""
    out = Path(cfg.output)
    maker = operation(cfg)
    if cfg.op == "combine":
        a_root, b_root = Path(cfg.a), Path(cfg.b)
        a_rels, b_rels = list_images(a_root, report), list_images(b_root, report)
        if not a_rels or not b_rels:
            raise DataError(f"{a_root if not a_rels else b_root}: no images ({SHOWN_EXTS})")
        m = listing.pair_by_name(a_rels, b_rels)
        report.failed += [(str(a_root / ra), "no B image of that name") for ra in m.only_a]
        report.failed += [(str(a_root / ra), "several B images of that name: "
                           + ", ".join(map(str, cands))) for ra, cands in m.ambiguous]
        report.failed += [(str(b_root / rb), "no A image of that name") for rb in m.only_b]
        report.failed += [(str(b_root / rb), "several A images match it") for rb in m.shared]
        jobs = []
        b_of = {ra: rb for ra, rb in m.pairs if rb not in m.shared}
        for ra, rel in _targets(list(b_of), a_root, report, lambda r: out / r):
            pa, pb, dst = a_root / ra, b_root / b_of[ra], out / rel
            jobs.append((str(pa), dst, lambda dst=dst, pa=pa, pb=pb: save(
                combine(load(pa), load(pb), str(pa), str(pb)), dst,
                maker.record((pa, pb))), (pa, pb)))
        return jobs

    root = Path(cfg.input)
    rels = list_images(root, report)
    if not rels:
        raise DataError(f"{root}: no images ({SHOWN_EXTS})")
    if cfg.op == "split" and cfg.halves:
        # Halves keep the source's kind as every operation does (TIFF: any depth, N bands).
        return [(str(root / rel), out / "A" / dst,
                 lambda src=root / rel, dst=dst: save_halves(src, out, dst, maker), (root / rel,))
                for rel, dst in _targets(rels, root, report, lambda r: f"{out / 'A' / r} and "
                                         f"{out / 'B' / r}")]
    if cfg.op == "split":
        assignment = split_assignment(rels, cfg.ratios, cfg.seed)
        check_earlier_split(out, assignment)
        return [(str(root / rel), out / part / rel,
                 lambda src=root / rel, dst=out / part / rel: _copy_checked(src, dst),
                 (root / rel,))
                for part, chosen in assignment.items()
                for rel in chosen]
    if cfg.op == "resize":
        def fn(a: np.ndarray, src: Path) -> np.ndarray:
            how = cfg.resample
            if how == "auto":
                how = "nearest" if is_label_map(a) else "bicubic"
            if how == "nearest" and cfg.resample == "auto":
                report.nearest.append(str(src))  # list.append: atomic under the GIL
            return resize(a, cfg.size, cfg.pad, how)
    else:
        op = PER_IMAGE[cfg.op]
        if cfg.op == "edges":
            _cv2()  # fail once, up front, rather than once per image
        fn = lambda a, src: op(a)  # noqa: E731
    return [(str(root / rel), out / dst,
             lambda src=root / rel, dst=out / dst: save(
                 fn(load(src), src), dst, maker.record((src,))), (root / rel,))
            for rel, dst in _targets(rels, root, report, lambda r: out / r)]


# ---------------------------------------------------------------------------- run


def elsewhere(dst: Path, sources: tuple, maker: provenance.Maker | None) -> str | None:
    """Why the existing ``dst`` is not what this run would write (``provenance``), or None.
    ``split``'s copies (``maker`` None) are compared by content."""
    if maker is not None:
        return maker.made_elsewhere(dst, sources)
    try:
        if provenance.file_id(dst) == provenance.file_id(sources[0]):
            return None
    except OSError:
        return None
    return f"is not a copy of {sources[0]} (another input's, or an earlier version's)"


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path``, links followed, lies in ``folder`` (already resolved)."""
    try:
        return path.resolve().is_relative_to(folder)
    except (OSError, RuntimeError):  # a link loop on the way
        return False


def run(cfg: ProcessConfig) -> Report:
    """Do ``cfg.op`` for every input; per-file failures go into the report, not up."""
    validate(cfg)
    images.max_pixels()  # a bad $P2P_MAX_IMAGE_PIXELS is one error, not one per file
    report = Report()
    jobs = plan(cfg, report)
    out = Path(cfg.output).resolve()
    todo, foreign = [], []
    maker = operation(cfg)
    for name, dst, work, sources in jobs:
        if not _inside(dst, out):
            report.failed.append((name, f"output {dst} escapes the output folder {cfg.output} "
                                        "(a link inside it points elsewhere); not written"))
        elif (blocked := provenance.in_the_way(dst)) is not None:
            report.failed.append((name, f"cannot write {dst}: {blocked}"))
        elif dst.exists() and not cfg.overwrite and \
                not any(provenance.unreadable(src) for src in sources):
            # (an unreadable input runs: the decoder names its problem, never "skipped")
            why = elsewhere(dst, sources, maker)
            if why:
                foreign.append((dst, why))
            report.skipped += 1
        else:
            todo.append((name, work))
    # never skipped as done: refused before anything is written
    provenance.refuse(foreign, "these inputs and settings")
    if todo:
        check_writable(Path(cfg.output))  # one line now, not one failure per image
    workers = cfg.workers or os.cpu_count() or 1
    # Threads, not processes: Pillow and OpenCV release the GIL while decoding, resizing,
    # running Canny and encoding, and threads need no pickling of the work closures.
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(todo), desc=cfg.op, unit="img", disable=not cfg.progress) as bar:
        futures = {pool.submit(work): name for name, work in todo}
        for fut in as_completed(futures):
            try:
                fut.result()
                report.written += 1
            except Exception as e:  # noqa: BLE001 - the per-file boundary: record, go on
                reason = str(e) if isinstance(e, P2PError) else \
                    f"{type(e).__name__}: {one_line(e)}".removesuffix(f": {type(e).__name__}")
                reason = reason.removeprefix(f"{futures[fut]}: ")  # named once, in front
                report.failed.append((futures[fut], reason))
            bar.update(1)
    report.failed.sort()
    return report
