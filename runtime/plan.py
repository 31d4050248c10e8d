"""Which outputs ``p2p-translate`` writes: inputs (files and folders) -> ``Job``s.

Folders are scanned recursively in natural order; outputs mirror the input tree under the
output folder, named ``<stem>.<format>``; clashes, escapes and self-overwrites are refused
up front, each with one line naming the input.
"""

from __future__ import annotations

import re
from collections import Counter
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
