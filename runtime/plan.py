"""Which outputs ``p2p-translate`` writes: inputs (files and folders) -> ``Job``s.

Folders are scanned recursively in natural order; outputs mirror the input tree under the
output folder, named ``<stem>.<format>``; clashes, escapes and self-overwrites are refused
up front, each with one line naming the input.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import images, video
from .errors import DataError


@dataclass(frozen=True)
class Job:
    src: Path
    dst: Path
    root: Path  # the output folder this job's tree is mirrored into (gallery location)
    video: bool = False  # a video or animation: frames in, a video out (p2p.runtime.videorun)


def _natural(s: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def scan(folder: Path, pattern: str | None, exclude: Path | None,
         errors: list[OSError] | None = None) -> list[Path]:
    """Image and video files under ``folder`` (recursive, hidden entries and ``exclude``
    skipped), as paths relative to it, in natural order (2.jpg before 10.jpg). Links to
    folders are not followed (no cycles); folders that cannot be listed go into ``errors``."""
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
