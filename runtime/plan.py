"""Which outputs ``p2p-translate`` writes: inputs (files and folders) -> ``Job``s.

Folders are scanned recursively in natural order; outputs mirror the input tree under the
output folder, named by ``output_names`` (``<stem>.<format>``, a video's ``<stem>.<container>``;
same-stem neighbours told apart by their own extension). Two inputs that would still write one
output (``a/x.png b/x.png -o out``) refuse the whole run up front, in one line naming both
(``collision``); escapes and self-overwrites are refused per input, each in one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import images, listing, video
from .errors import DataError
from .listing import list_images


@dataclass(frozen=True)
class Job:
    src: Path
    dst: Path
    root: Path  # the output folder this job's tree is mirrored into (gallery location)
    video: bool = False  # a video or animation: frames in, a video out (p2p.runtime.videorun)


def _natural(s: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


OUTPUT_SUFFIX = "-translated"  # default output folders: <input>-translated


def is_output_folder(name: str) -> bool:
    """Whether a folder name is one p2p-translate writes by default (``<name>-translated``)."""
    return name.endswith(OUTPUT_SUFFIX)


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
    work, since which of them would win is arbitrary. An input named twice is one job."""
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
    pairs = _once(pairs)
    moving = [video.is_video_name(src) or video.is_animation(src) for src, _, _ in pairs]
    names = output_names([(root / rel, v) for (_, rel, root), v in zip(pairs, moving)], cfg.fmt)
    jobs, seen = [], {}
    for (src, rel, root), dst, is_video in zip(pairs, names, moving):
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
            raise DataError(collision(seen[real].src, src, dst))
        else:
            seen[real] = Job(src, dst, root, is_video)
            jobs.append(seen[real])
    return jobs, refused


def _once(pairs: list[tuple[Path, Path, Path]]) -> list[tuple[Path, Path, Path]]:
    """``pairs`` without repeats of one input to one place (``x.png x.png``; ``dir`` and
    ``dir/x.png`` into one default folder): the same file named twice is one job."""
    kept, seen = [], set()
    for src, rel, root in pairs:
        try:
            key = (src.resolve(), root / rel)
        except (OSError, RuntimeError):  # a link loop: the plan names it
            key = (src, root / rel)
        if key not in seen:
            seen.add(key)
            kept.append((src, rel, root))
    return kept


def output_suffix(src: Path, fmt: str, is_video: bool) -> str:
    """The extension of ``src``'s output: the video's container (``video.output_suffix``:
    its own, an animation's ``.mp4``), else ``.<fmt>``."""
    return video.output_suffix(src) if is_video else "." + fmt


def output_names(targets: list[tuple[Path, bool]], fmt: str) -> list[Path]:
    """The one naming rule of p2p-translate's outputs, images and videos alike.

    ``targets``: (the input's path mirrored into the output folder, whether it is a video or
    an animation). Each output is ``<stem><ext>`` (``output_suffix``: ``.<fmt>``, a video's
    container, an animation's ``.mp4``). Where inputs of one folder would share that name
    (``x.png`` and ``x.jpg``; ``clip.mp4`` and an animated ``clip.gif``; ``anim.gif`` and
    ``anim.webp``), every one of them keeps its own extension: ``<name><ext>`` (``x.png.png``
    and ``x.jpg.png``; ``clip.mp4.mp4`` and ``clip.gif.mp4``). Every one, not all but one:
    a plain name kept by one of them could be the output an earlier run made of the other
    (``x.jpg`` alone gives ``x.png``), which the rerun would then skip as done."""
    exts = [output_suffix(t, fmt, v) for t, v in targets]
    plain = [t.with_name(t.stem + ext) for (t, _), ext in zip(targets, exts)]
    names: dict[Path, set[Path]] = {}
    for (t, _), p in zip(targets, plain):
        names.setdefault(p, set()).add(t)
    # One name from one folder's files of different extensions: their extensions tell them
    # apart. The same name from two folders (a/x.png, b/x.png -o out) cannot be told apart
    # by it: left as it is, the plan refuses it (``collision``).
    return [p if len(names[p]) == 1 else t.with_name(t.name + ext)
            for (t, _), ext, p in zip(targets, exts, plain)]


def collision(a: Path, b: Path, dst: Path) -> str:
    """The one line that refuses a run in which two inputs would write one output."""
    return (f"{a} and {b} would both be written to {dst}; nothing was run: translate them "
            "into different --output folders, or name their folders (each is mirrored "
            "under its own name)")
