"""Where p2p-train's images are: the pix2pix layout (``train/`` and ``val/`` or ``test/``,
else one flat folder), the images it leaves out (said in one note), and the listing of a
data folder. Torch-free; ``data`` builds the datasets from it.
"""

from __future__ import annotations

from pathlib import Path

from p2p.runtime import images, listing
from p2p.runtime.errors import DataError


def list_images(folder: Path) -> list[Path]:
    """Sorted image files in ``folder`` and its subfolders (p2p-process mirrors nested
    folders, so a set it made is nested too); a missing or empty folder is a DataError.
    Entries with an image name that are not regular files (a FIFO, a dangling or looping
    link) are listed too, so that the check reports them instead of silently dropping them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such data folder")
    unlisted: list[OSError] = []
    files = [folder / rel for rel in listing.list_images(folder, errors=unlisted)]
    if unlisted:  # its images would be left out without a word
        raise DataError(f"{unlisted[0].filename}: cannot list this folder: "
                        f"{unlisted[0].strerror or unlisted[0]}" + (
                            f" (and {len(unlisted) - 1} more folders)" if len(unlisted) > 1 else ""))
    if not files:
        raise DataError(f"{folder}: no images ({images.SHOWN_EXTS}) in this folder")
    return files


def split_dirs(root: Path) -> tuple[Path, Path | None]:
    """pix2pix layout: ``root/train`` and ``root/val`` (or ``test``); else ``root`` is flat.
    A ``val/`` or ``test/`` without ``train/`` is a DataError: the flat (recursive) listing
    would train on the held-out images."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder")
    held = [s for s in ("val", "test") if (root / s).is_dir()]
    if (root / "train").is_dir():
        return root / "train", root / held[0] if held else None
    if held:
        raise DataError(f"{root}: has {held[0]}/ but no train/ folder; put the training images "
                        f"in {root / 'train'} (a flat folder would train on {held[0]}/ too)")
    return root, None


def outside(root: Path) -> list[Path]:
    """The images under ``root`` that ``split_dirs``'s layout leaves out: with a ``train/``
    folder, those outside train/, val/ and test/ (p2p-translate's ``*-translated`` output
    folders are never inputs: ``listing.list_outside``); none without one."""
    root = Path(root)
    return listing.list_outside(root, ("train", "val", "test")) \
        if (root / "train").is_dir() else []


def left_out(root: Path, held: Path | None) -> str | None:
    """A note line naming the images under ``root`` that ``split_dirs``'s layout leaves
    out (``outside``). Which split they belong to is not p2p's to guess (held-out images
    trained on would make val_L1 meaningless), so they are not used, and said. None when
    there are none."""
    root = Path(root)
    found = outside(root)
    if not found:
        return None
    n = len(found)
    where = f"train/ and {held.name}/" if held is not None else "train/"
    samples = (f"samples {held.name}/" if held is not None
               else "with no val/ folder samples train/ too")
    it = "them" if n != 1 else "it"
    also = "" if held is not None else f", or into a val/ folder to sample {it}"
    return (f"note: {n} image{'s' if n != 1 else ''} in {root} outside {where} "
            f"{'are' if n != 1 else 'is'} not used ({listing.listed(found)}): beside a train/ "
            f"folder p2p-train trains on train/ only and {samples}; move {it} into "
            f"train/ to train on {it}{also}")


def list_training(train_dir: Path, root: Path) -> list[Path]:
    """``list_images(train_dir)``; an empty ``root/train`` with images left out beside it
    (``outside``) says where they are, so the error points at the fix."""
    try:
        return list_images(train_dir)
    except DataError as e:
        found = outside(root) if Path(train_dir) != Path(root) else []
        if not found:
            raise
        n = len(found)
        raise DataError(f"{e}; {n} image{'s' if n != 1 else ''} beside it in {root} "
                        f"({listing.listed(found)}) {'are' if n != 1 else 'is'} not read: "
                        f"move {'them' if n != 1 else 'it'} into {train_dir} to train on "
                        f"{'them' if n != 1 else 'it'}") from None
