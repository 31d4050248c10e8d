"""The run folder: where a run lives, what a resume reads back, and its metrics log.

    config.json            the TrainConfig, model config and task of the run
    checkpoints/latest.pt  (+ step_NNNNNN.pt snapshots) see trainer/checkpoint.py
    metrics.jsonl          one JSON line per --log-every steps (+ val_L1 at sample steps)
    samples/, tensorboard/
    .p2p-train.lock        held (flock) by the p2p-train writing the folder; holds its pid
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from p2p.runtime.errors import CheckpointError, DataError, P2PError
from p2p.runtime.files import os_reason
from p2p.trainer import checkpoint


def default_output(data: str | None, data_a: str | None) -> str:
    src = data or data_a
    return f"runs/{Path(src.rstrip('/')).name}" if src else "runs/run"


LOCK_NAME = ".p2p-train.lock"


def lock_run(out: Path):
    """Take ``out/.p2p-train.lock`` (an exclusive ``flock``) for this process and write its
    pid in it; returns the open file, which holds the lock until it is closed or the process
    ends (however it ends: a killed run's stale file never blocks a --resume). A folder
    another p2p-train holds is a DataError naming that process, at once, before anything
    in the folder changes: two runs would interleave their metrics and checkpoints."""
    path = Path(out) / LOCK_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
    except OSError as e:
        raise DataError(f"{path}: cannot write: {e.strerror or e}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: held by a live process
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise DataError(f"{out}: another p2p-train (pid {holder}) is training in this run "
                        "folder; wait for it to end, or choose another --output") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def load_run_config(output: Path) -> dict:
    """The TrainConfig fields a previous run saved in ``output/config.json``, its data as
    the run resolved it (the absolute folders its ``task`` records; ``--data`` as typed was
    relative to the folder the run started in, and names another folder, or none, from
    anywhere else)."""
    path = Path(output) / "config.json"
    try:
        config = json.loads(path.read_text())
        train = dict(config["train"])
        task = config.get("task") or {}
        if task.get("data_a") and task.get("data_b"):
            train["data_a"], train["data_b"] = task["data_a"], task["data_b"]
        elif train.get("data") and (task.get("data_root") or config.get("data_path")):
            # (runs of earlier versions record the resolved folder as data_path only)
            train["data"] = task.get("data_root") or config["data_path"]
        return train
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no run to resume here (no config.json)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a p2p run config ({e})") from None


def previous_run(output: Path) -> dict:
    """What ``output/config.json`` says of the run's data before a resume rewrites it:
    ``data_path`` (the folder it resolved, absolute; '' or None when unknown); empty when
    there is no readable config."""
    try:
        config = json.loads((Path(output) / "config.json").read_text())
        return {"data_path": config.get("data_path")}
    except (OSError, ValueError, AttributeError):
        return {}


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # a line torn by a hard kill
        return None


def prepare_output(out: Path, resume: bool, overwrite: bool) -> dict | None:
    """Fresh run, resume or overwrite; returns the checkpoint state to resume from."""
    latest = out / "checkpoints" / "latest.pt"
    if resume:
        if not latest.exists() and not latest.is_symlink():
            # config.json is written at the start, the first checkpoint only later: a run
            # killed in between has nothing to continue, and must be started again.
            raise CheckpointError(
                f"{out}: nothing to resume: the run stopped before its first checkpoint "
                f"({latest} is written every --save-every steps, at the end and on Ctrl-C); "
                "start it over with --overwrite instead of --resume")
        state = checkpoint.load_checkpoint(latest)
        # Lines logged after the checkpoint belong to a future we are about to redo.
        metrics = out / "metrics.jsonl"
        if metrics.exists():
            keep = [ln for ln in metrics.read_text().splitlines() if _step_of(ln) is not None
                    and _step_of(ln) <= state["step"]]
            checkpoint.atomic_write(metrics, lambda tmp: tmp.write_text(
                "".join(ln + "\n" for ln in keep)))
        return state
    if (out / "config.json").exists() or latest.exists():
        if not overwrite:
            raise DataError(f"{out}: already holds a run; pass --resume to continue it, "
                            "--overwrite to start again, or choose another --output")
        for name in ("checkpoints", "samples", "tensorboard"):
            shutil.rmtree(out / name, ignore_errors=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
    return None


class RunLog:
    """metrics.jsonl (+ TensorBoard when installed)."""

    def __init__(self, out: Path, step: int):
        self.path = out / "metrics.jsonl"
        self.file = open(self.path, "a")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=step or None)
        except ImportError:
            pass

    def write(self, record: dict) -> None:
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as e:  # a full disk: one line naming it, as for the checkpoints
            raise P2PError(f"{self.path}: cannot write: {os_reason(e, self.path)}") from None
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "epoch"):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


class NullLog:
    """The metrics log of torchrun ranks other than 0: only rank 0 writes the run folder."""

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass
