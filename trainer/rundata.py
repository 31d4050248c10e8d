"""Where a run's model inputs are: the one lookup of a run's training data after training.

The exporter calibrates INT8 on a run's training inputs and checks every file on its held-out
ones, so it must find exactly the folders the trainer read, from anywhere. A checkpoint
records them as the trainer resolved them (``task``: ``data_root``, or ``data_a`` and
``data_b``, absolute paths; the direction and colour space say which images, and which half of
an A|B image, feed the generator). Checkpoints of earlier p2p versions record only ``data``
as typed ('DIR', a dataset name, or 'DIR_A|DIR_B'); that is looked up by the trainer's own
rule (``datasets.locate``: a folder relative to the current folder, else a named dataset in
``$P2P_DATA``), and the layout by the trainer's ``data.split_dirs`` (``train/`` with
``val/`` or ``test/`` beside it, or a flat folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from p2p.runtime.errors import DataError

from .data import split_dirs
from .datasets import locate


@dataclass(frozen=True)
class RunData:
    """The generator's inputs of one run: ``train`` and ``val`` folders (``val`` None when the
    run had no held-out split) and ``split``: 'left' or 'right' (the input half of A|B pairs)
    or 'none' (whole images: two-folder and colorization runs)."""

    train: Path
    val: Path | None
    split: str
    recorded: str  # the data as the run records it, for messages

    def check_images(self) -> tuple[Path, str]:
        """(folder, what it is) for the exporter's checks: val/, else the training images."""
        if self.val is not None:
            return self.val, f"val images from {self.val}"
        return self.train, f"training images from {self.train} (the run has no val/)"


def recorded_task(root: Path | None, data: str | None, data_a: str | None,
                  data_b: str | None) -> dict:
    """What a new checkpoint records about its data (absolute paths, so an export from any
    folder finds them); ``data`` as typed is kept beside them for people to read."""
    if data_a or data_b:
        return {"data": f"{data_a}|{data_b}", "data_a": str(Path(data_a).resolve()),
                "data_b": str(Path(data_b).resolve())}
    return {"data": data, "data_root": str(Path(root).resolve()) if root else None}


def records_data(task: dict) -> bool:
    """Whether a checkpoint's task names any training data (reference-format files and
    pretrained downloads do not)."""
    return any(task.get(k) for k in ("data", "data_root", "data_a"))


def find(task: dict) -> RunData:
    """The run's input folders from its checkpoint's ``task``; DataError saying what was
    looked for when they are not on this machine (or the file records no data)."""
    direction = task.get("direction", "AtoB")
    data = task.get("data")
    if not records_data(task):
        raise DataError("the checkpoint records no training data (a reference-format file "
                        "or a pretrained download)")
    a, b = task.get("data_a"), task.get("data_b")
    if not a and not task.get("data_root") and "|" in str(data):
        a, b = str(data).split("|", 1)  # earlier versions: 'DIR_A|DIR_B' as typed
    if a:
        side = a if direction == "AtoB" else b
        folder = Path(side).expanduser()
        if not folder.is_dir():
            raise DataError(f"the run's {'A' if side == a else 'B'} folder {side} (its "
                            f"inputs) is not here")
        train, val = split_dirs(folder)
        return RunData(train, val, "none", str(data))
    root = Path(task["data_root"]) if task.get("data_root") else locate(str(data))
    if root is None or not root.is_dir():
        where = task.get("data_root") or f"{data!r} (a folder here, or a dataset in $P2P_DATA)"
        raise DataError(f"the run's data {where} is not here")
    train, val = split_dirs(root)
    lab = task.get("color_space") == "lab"
    split = "none" if lab else "left" if direction == "AtoB" else "right"
    return RunData(train, val, split, str(data or root))
