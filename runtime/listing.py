"""Which files are images, and which go together: the one listing and the one pairing rule
of every command (p2p-train's two folders, p2p-process combine, p2p-eval).

A name is a candidate when ``images.is_image_name`` says so (Pillow-readable extension, not
hidden); whether it is an image is decided by decoding it. Pairs match by relative path; a
name also matches the file of the other side whose whole name it extends by one extension
(``x/1.jpg.png`` with ``x/1.jpg``: p2p-translate's outputs of same-stem files), and the one
file of the other side with the same path and another extension (``x/1.png`` with
``x/1.jpg``: translators and converters change formats).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .images import is_image_name

MAX_LISTED = 5  # names shown in one error line
OUTPUT_SUFFIX = "-translated"  # p2p-translate's default output folders: <input>-translated


def is_output_folder(name: str) -> bool:
    """Whether a folder name is one p2p-translate writes by default (``<name>-translated``):
    earlier outputs, which neither p2p-translate nor p2p-train's notes take as inputs."""
    return name.endswith(OUTPUT_SUFFIX)


def list_images(root: Path, recursive: bool = True, errors: list | None = None,
                match=None, exclude: Path | None = None, skip_dir=None,
                skipped: list | None = None) -> list[Path]:
    """Image file names under ``root`` as sorted relative paths. Hidden entries are skipped
    and links to folders are not followed (no cycles). Entries with an image name that are
    not regular files (a FIFO, a dangling link) are kept, so the decoder names them rather
    than they vanish. Folders that cannot be listed go into ``errors`` (OSError).
    ``match(name, rel)``: which names count (default ``is_image_name``; p2p-translate's
    ``--glob``); ``exclude``: a resolved folder not to enter (an output inside the input);
    ``skip_dir(name)``: folders not to enter either (p2p-translate's earlier outputs), each
    appended to ``skipped``."""
    root = Path(root)
    found = []
    onerror = None if errors is None else errors.append
    for dirpath, dirs, files in os.walk(root, onerror=onerror):
        here = Path(dirpath)
        if skip_dir is not None and recursive:
            passed = [d for d in dirs if not d.startswith(".") and skip_dir(d)]
            if skipped is not None:
                skipped += [here / d for d in passed]
            dirs[:] = [d for d in dirs if d not in passed]
        dirs[:] = [d for d in dirs if not d.startswith(".") and (
            exclude is None or (here / d).resolve() != exclude)] if recursive else []
        for name in files:
            rel = (here / name).relative_to(root)
            if not name.startswith(".") and (is_image_name(name) if match is None
                                             else match(name, rel)):
                found.append(rel)
    return sorted(found, key=lambda r: r.as_posix())


def list_outside(root: Path, folders: tuple[str, ...]) -> list[Path]:
    """The image files under ``root`` (as paths under it, ``list_images``'s rules) that
    lie outside its subfolders named ``folders``: loose at its top or in other folders
    (p2p-train names those its train/val layout does not read). p2p-translate's own
    output folders (``is_output_folder``) are not inputs here either."""
    root = Path(root)
    found = [root / rel for rel in list_images(root, recursive=False)]
    try:
        subs = sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False)
                      and not e.name.startswith(".") and e.name not in folders
                      and not is_output_folder(e.name))
    except OSError:
        subs = []
    for name in subs:
        found += [root / name / rel
                  for rel in list_images(root / name, skip_dir=is_output_folder)]
    return found


def matches(rel: Path, pattern: str | None) -> bool:
    """The ``--glob`` rule of every command: ``pattern`` (fnmatch) matches the file's name or
    its path relative to the folder searched ('*.jpg', 'sub/*'); None matches any image name."""
    if pattern is None:
        return is_image_name(rel.name)
    return fnmatch.fnmatch(rel.name, pattern) or fnmatch.fnmatch(rel.as_posix(), pattern)


@dataclass
class Pairing:
    pairs: list[tuple[Path, Path]] = field(default_factory=list)  # (a, b) in a's order
    only_a: list[Path] = field(default_factory=list)  # no b of that name
    only_b: list[Path] = field(default_factory=list)  # no a of that name
    ambiguous: list[tuple[Path, list[Path]]] = field(default_factory=list)  # several b match
    shared: list[Path] = field(default_factory=list)  # b matched by several a

    def require_complete(self, a_dir: Path, b_dir: Path, a_kind: str, b_kind: str) -> None:
        """DataError (one line, a few names listed) unless every a and every b is paired
        exactly once; ``a_kind``/``b_kind`` name the two sides ("prediction", "target")."""
        n_a = len(self.pairs) + len(self.only_a) + len(self.ambiguous)
        n_b = len({t for _, t in self.pairs}) + len(self.only_b)
        if self.ambiguous:
            raise DataError(f"{b_dir}: several {b_kind}s match " + listed(
                f"{p} ({' / '.join(map(str, cands))})" for p, cands in self.ambiguous))
        if self.only_a:
            raise DataError(f"{len(self.only_a)} of {n_a} {a_kind}s in {a_dir} have no "
                            f"{b_kind} in {b_dir}: {listed(self.only_a)}")
        if self.shared:
            raise DataError(f"{a_dir}: several {a_kind}s (other extensions?) match one "
                            f"{b_kind}: {listed(self.shared)}")
        if self.only_b:
            raise DataError(f"{len(self.only_b)} of {n_b} {b_kind}s in {b_dir} have no "
                            f"{a_kind} in {a_dir}: {listed(self.only_b)}")


def listed(names) -> str:
    """'a, b, c, d, e (and 3 more)': a few names for one error line."""
    names = [str(n) for n in names]
    more = f" (and {len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def raise_problems(problems: list[str | None], total: int, what: str = "images") -> None:
    """One DataError naming every bad file in ``problems`` (None entries are fine files):
    the problem itself when there is one, else a count and one indented line per file."""
    problems = [p for p in problems if p]
    if len(problems) == 1:
        raise DataError(problems[0])
    if problems:
        raise DataError(f"{len(problems)} of {total} {what} are unusable; fix or remove "
                        "them:\n" + "\n".join(f"  {p}" for p in problems))


def pair_by_name(a: list[Path], b: list[Path]) -> Pairing:
    """Pair two lists of relative paths: the same path first; else the b whose whole name
    an a extends by one extension (``x.jpg.png`` with ``x.jpg``: p2p-translate's name for
    files that share a stem, ``plan.output_names``); else the one b with the same path and
    another extension. Nothing is guessed: every other case is reported."""
    exact = set(b)
    by_stem: dict[str, list[Path]] = {}
    for t in b:
        by_stem.setdefault(t.with_suffix("").as_posix(), []).append(t)
    out = Pairing()
    for p in a:
        if p in exact:
            out.pairs.append((p, p))
            continue
        if p.suffix and p.with_suffix("") in exact:
            out.pairs.append((p, p.with_suffix("")))
            continue
        cands = by_stem.get(p.with_suffix("").as_posix(), [])
        if len(cands) == 1:
            out.pairs.append((p, cands[0]))
        elif cands:
            out.ambiguous.append((p, cands))
        else:
            out.only_a.append(p)
    uses: dict[Path, int] = {}
    for _, t in out.pairs:
        uses[t] = uses.get(t, 0) + 1
    out.shared = sorted((t for t, k in uses.items() if k > 1), key=lambda t: t.as_posix())
    out.only_b = [t for t in b if t not in uses and t not in
                  {c for _, cs in out.ambiguous for c in cs}]
    return out
