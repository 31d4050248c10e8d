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
    link) are listed too, so that the check reports them instead of silently dropping them.
    p2p-translate's output folders (``*-translated``) are never training data, at any depth
    (``translated_folders`` names them for the note)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such data folder")
    unlisted: list[OSError] = []
    files = [folder / rel for rel in listing.list_images(
        folder, errors=unlisted, skip_dir=listing.is_output_folder)]
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
        raise DataError(f"{root}: not a folder" if root.exists() else
                        f"{root}: no such data folder")
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


def translated_folders(root: Path) -> list[Path]:
    """p2p-translate's output folders (``*-translated``) under ``root`` that hold images:
    ``list_images`` never reads them, and the note says so."""
    skipped: list[Path] = []
    listing.list_images(root, skip_dir=listing.is_output_folder, skipped=skipped)
    # A link to a folder is never followed anyway: renaming it would not make it data.
    return sorted(d for d in skipped if not d.is_symlink() and listing.list_images(d))


def left_out(root: Path, held: Path | None) -> list[str]:
    """Note lines naming the images under ``root`` that p2p-train does not read: those
    ``split_dirs``'s layout leaves out (``outside``) and p2p-translate's output folders
    (``translated_folders``) inside what it reads. Which split loose images belong to is not
    p2p's to guess (held-out images trained on would make val_L1 meaningless), so they are
    not used, and said. Empty when there are none."""
    root = Path(root)
    layout = (root / "train").is_dir()
    # held names the split (two-folder runs pass side A's for both sides): this root's own
    read = ([root / "train"] + ([root / held.name] if held is not None else [])) if layout \
        else [root]
    notes = []
    folders = [f for d in read for f in translated_folders(d)]
    if folders:
        n = len(folders)
        them = "them" if n != 1 else "it"
        notes.append(f"note: {n} p2p-translate output folder{'s' if n != 1 else ''} "
                     f"(*{listing.OUTPUT_SUFFIX}) in {root} {'are' if n != 1 else 'is'} not "
                     f"used ({listing.listed(folders)}): translated images are never training "
                     f"data; rename {them} to train on {them}")
    found = outside(root)
    if not found:
        return notes
    n = len(found)
    where = f"train/ and {held.name}/" if held is not None else "train/"
    samples = (f"samples {held.name}/" if held is not None
               else "with no val/ folder samples train/ too")
    it = "them" if n != 1 else "it"
    also = "" if held is not None else f", or into a val/ folder to sample {it}"
    return notes + [
        f"note: {n} image{'s' if n != 1 else ''} in {root} outside {where} "
        f"{'are' if n != 1 else 'is'} not used ({listing.listed(found)}): beside a train/ "
        f"folder p2p-train trains on train/ only and {samples}; move {it} into "
        f"train/ to train on {it}{also}"]


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
