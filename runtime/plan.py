"""Which outputs ``p2p-translate`` writes: inputs (files and folders) -> ``Job``s.

Folders are scanned recursively in natural order; outputs mirror the input tree under the
output folder, named by ``output_names`` (``<stem>.<format>``, a video's ``<stem>.<container>``;
files of one source folder that would share a name keep their own extension, whatever this
run selects of that folder). Two inputs that would still write one
output (``a/x.png b/x.png -o out``) refuse the whole run up front, in one line naming both
(``collision``); escapes and self-overwrites are refused per input, each in one line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import images, listing, video
from .errors import DataError
from .listing import OUTPUT_SUFFIX, is_output_folder, list_images  # noqa: F401  (public here)


@dataclass(frozen=True)
class Job:
    src: Path
    dst: Path
    root: Path  # the output folder this job's tree is mirrored into (gallery location)
    video: bool = False  # a video or animation: frames in, a video out (p2p.runtime.videorun)
    # A video's output when frames are missing (``partial_output``): never the finished
    # name, nor any name another input of its folder or of this run is written to.
    partial: Path | None = None


def _natural(s: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def scan(folder: Path, pattern: str | None, exclude: Path | None,
         errors: list[OSError] | None = None,
         outputs: list[Path] | None = None) -> list[Path]:
    """Image and video files under ``folder`` (``listing.list_images``: recursive, hidden
    entries and ``exclude`` skipped), or the names ``pattern`` matches (``listing.matches``),
    as paths relative to it, in natural order (2.jpg before 10.jpg; a folder's files before
    its subfolders'). Subfolders named ``*-translated`` are earlier outputs, never inputs
    again: skipped, and listed in ``outputs``."""
    def wanted(name: str, rel: Path) -> bool:
        if pattern is None:
            return images.is_image_name(name) or video.is_video_name(name)
        return listing.matches(rel, pattern)

    found = list_images(folder, True, errors, wanted, exclude, skip_dir=is_output_folder,
                        skipped=outputs)
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


def plan(cfg,
         outputs: list[Path] | None = None) -> tuple[list[Job], list[tuple[Path, str]]]:
    """Every (input, output) pair in input order, and the inputs refused up front; earlier
    output folders found inside input folders (skipped) go into ``outputs``. Raises
    DataError (``collision``) when two inputs would write one output: before any model
    work, since which of them would win is arbitrary. A file named twice is one job
    (``_once``)."""
    pairs: list[tuple[Path, Path, Path, bool]] = []  # (src, rel output path, root, from_dir)
    refused: list[tuple[Path, str]] = []
    several = len(cfg.inputs) > 1
    for given in cfg.inputs:
        root = Path(cfg.output).resolve() if cfg.output else default_root(given, several)
        if given.is_dir():
            base = Path(given.resolve().name) if several and cfg.output else Path()
            unlisted: list[OSError] = []
            for rel in scan(given, cfg.glob, exclude=root, errors=unlisted, outputs=outputs):
                pairs.append((given / rel, base / rel, root, True))
            refused += [(Path(e.filename), f"{e.filename}: cannot list this folder: "
                         f"{e.strerror or e}") for e in unlisted]
        else:
            pairs.append((given, Path(given.name), root, False))
    pairs = _once(pairs)
    moving = [is_moving(src) for src, _, _, _ in pairs]
    names = output_names([src for src, _, _, _ in pairs],
                         lambda p: output_suffix(p, cfg.fmt, is_moving(p)), translatable)
    jobs, seen = [], {}
    for (src, rel, root, _), name, is_video in zip(pairs, names, moving):
        dst = root / rel.parent / name
        try:
            real, src_real = dst.resolve(), src.resolve()
        except (OSError, RuntimeError):  # RuntimeError: Python < 3.13's "Symlink loop"
            refused.append((src, f"{src}: cannot read: a symbolic link loop"))
            continue
        if not real.is_relative_to(root):
            refused.append((src, f"{src}: output path {dst} escapes the output folder {root} "
                                 "(a link inside it points elsewhere); not written"))
        elif real == src_real:
            refused.append((src, f"{src}: the output would overwrite the input itself"))
        elif real in seen:
            raise DataError(collision(seen[real].src, src, dst))
        else:
            seen[real] = Job(src, dst, root, is_video)
            jobs.append(seen[real])
    return _with_partials(jobs, cfg.fmt), refused


def _with_partials(jobs: list[Job], fmt: str) -> list[Job]:
    """Video jobs with their ``partial`` output (``partial_output``), checked against the
    outputs of every file of the source folder (by the one naming rule) and of this run."""
    if not any(j.video for j in jobs):
        return jobs
    taken = {j.dst for j in jobs}
    folders: dict[Path, set[str]] = {}
    out = []
    for job in jobs:
        if job.video:
            names = folders.get(job.src.parent)
            if names is None:
                try:
                    siblings = [job.src.parent / rel for rel in list_images(
                        job.src.parent, recursive=False, match=translatable)]
                except OSError:
                    siblings = []
                names = folders[job.src.parent] = set(output_names(
                    siblings, lambda p: output_suffix(p, fmt, is_moving(p)), translatable))
            job = Job(job.src, job.dst, job.root, True,
                      partial_output(job, {d for d in taken if d.parent == job.dst.parent}
                                     | {job.dst.parent / n for n in names}))
        out.append(job)
    return out


def partial_output(job: Job, taken: set[Path]) -> Path:
    """Where ``job``'s video goes when frames are missing: ``<stem>.partial<ext>``
    (``clip.partial.mp4``), or ``<name>.partial<ext>`` (``clip.mp4.partial.mp4``) where an
    input's output already has that name (a ``clip.partial.mp4`` beside ``clip.mp4``): a
    partial never overwrites another output, and a rerun that completes removes only its
    own. DataError when both are taken."""
    dst = job.dst
    for name in (f"{dst.stem}.partial{dst.suffix}", f"{job.src.name}.partial{dst.suffix}"):
        if dst.with_name(name) not in taken:
            return dst.with_name(name)
    raise DataError(f"{job.src}: no name for its partial video beside {dst}: "
                    f"{dst.stem}.partial{dst.suffix} and {job.src.name}.partial{dst.suffix} "
                    "are other inputs' outputs; rename one of them")


def _once(pairs: list[tuple[Path, Path, Path, bool]]) -> list[tuple[Path, Path, Path, bool]]:
    """``pairs`` with each input file once (``x.png x.png``; ``dir dir/x.png``), in the
    order first named. A file reached both through a folder given on the command line and
    by its own name is written where the (first) folder's tree puts it (``dir dir/x.png -o
    out``: out/dir/x.png, as ``dir`` alone would; without -o both are the same place)."""
    chosen: dict[object, int] = {}
    kept: list[tuple[Path, Path, Path, bool]] = []
    for pair in pairs:
        src = pair[0]
        try:
            key = src.resolve()
        except (OSError, RuntimeError):  # a link loop: the plan names it
            key = src
        if key not in chosen:
            chosen[key] = len(kept)
            kept.append(pair)
        elif pair[3] and not kept[chosen[key]][3]:
            kept[chosen[key]] = pair  # the folder's place, at the first mention's turn
    return kept


def is_moving(src: Path) -> bool:
    """A video or an animation (frames in, a video out)."""
    return video.is_video_name(src) or video.is_animation(src)


def translatable(name: str, rel: Path) -> bool:
    """Every file p2p-translate would take in a folder, whatever --glob selects."""
    return images.is_image_name(name) or video.is_video_name(name)


def output_suffix(src: Path, fmt: str, is_video: bool) -> str:
    """The extension of ``src``'s output: the video's container (``video.output_suffix``:
    its own, an animation's ``.mp4``), else ``.<fmt>``."""
    return video.output_suffix(src) if is_video else "." + fmt


def output_names(srcs: list[Path], suffix: Callable[[Path], str],
                 takes: Callable[[str, Path], bool] | None = None) -> list[str]:
    """The one naming rule of the outputs of p2p-translate and p2p-process: each source
    file's output file name (the caller puts it in the mirrored folder).

    ``suffix(src)``: the output's extension (p2p-translate: ``.<fmt>``, a video's container,
    an animation's ``.mp4``; p2p-process: ``.png``, ``.tif``). Each output is
    ``<stem><suffix>``, but where another file of the same source folder would give that
    name too (``x.png`` and ``x.jpg``; ``clip.mp4`` and an animated ``clip.gif``), it keeps
    its own extension: ``<name><suffix>`` (``x.png.png`` and ``x.jpg.png``). The other
    files are every file the command would take in that folder (``takes(name, rel)``,
    ``listing.list_images``'s rule; default: image names), whichever of them this run
    selects (``--glob``, files named one by one): a name that depended on the selection
    would let ``--glob '*.png'`` find ``x.jpg``'s earlier ``x.png`` and skip it as done.
    Each source folder is listed once."""
    folders: dict[Path, dict[str, list[Path]]] = {}
    names = []
    for src in srcs:
        stems = folders.get(src.parent)
        if stems is None:
            try:
                found = list_images(src.parent, recursive=False, match=takes)
            except OSError:
                found = []
            stems = folders[src.parent] = {}
            for rel in found:
                stems.setdefault(rel.stem, []).append(rel)
        mine = src.stem + suffix(src)
        clash = any(other.name != src.name and other.stem + suffix(src.parent / other) == mine
                    for other in stems.get(src.stem, []))
        names.append(src.name + suffix(src) if clash else mine)
    return names


def collision(a: Path, b: Path, dst: Path) -> str:
    """The one line that refuses a run in which two inputs would write one output, with
    the advice that fits: files of one folder (``x.png`` beside ``x.jpg`` and
    ``x.png.png``) can only be told apart by renaming one; files of two folders can be
    translated separately or into different --output folders."""
    head = f"{a} and {b} would both be written to {dst}; nothing was run: "
    if a.parent.resolve() == b.parent.resolve():
        return head + f"rename one of them (both are in {a.parent})"
    return head + "translate them in separate runs, or into different --output folders"
