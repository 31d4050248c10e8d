"""The run folder under stress (issue 22, finding 6): one p2p-train per folder, and a full
disk during a checkpoint is one line naming the disk, the previous checkpoint kept."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from p2p.cli.train import main as train_cli
from test_train import _restore_threads, make_pairs  # noqa: F401  (autouse fixture)
from p2p.trainer import checkpoint, rundir

TINY = ["--image-size", "32", "--load-size", "32", "--ngf", "4", "--ndf", "4", "--quiet",
        "--threads", "1", "--workers", "0", "--sample-every", "0"]


@pytest.fixture
def pairs(tmp_path) -> Path:
    return make_pairs(tmp_path / "pairs", 2)


def train(*args):
    return CliRunner().invoke(train_cli, [str(a) for a in (*args, *TINY)])


def test_a_second_run_into_a_held_folder_fails_at_once_naming_the_holder(pairs, tmp_path):
    out = tmp_path / "run"
    # The holder: another process that took the run folder's lock and keeps it.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from p2p.trainer.rundir import lock_run; "
        f"f = lock_run({str(out)!r}); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        r = train("--data", pairs, "--max-steps", 1, "-o", out)
        assert time.monotonic() - t0 < 30
        assert r.exit_code == 1
        errors = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
        assert errors == [f"Error: {out}: another p2p-train (pid {holder.pid}) is training in "
                          "this run folder; wait for it to end, or choose another --output"]
        assert not (out / "config.json").exists() and not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed: its lock file (with its pid) stays, and blocks nothing.
    assert (out / rundir.LOCK_NAME).read_text().strip() == str(holder.pid)
    r = train("--data", pairs, "--max-steps", 1, "-o", out)
    assert r.exit_code == 0, r.output
    r = train("--resume", "-o", out, "--max-steps", 2)
    assert r.exit_code == 0, r.output
    assert torch.load(out / "checkpoints" / "latest.pt", weights_only=True)["step"] == 2


class _FullDisk(io.FileIO):
    """A file on a disk that fills after ``room`` bytes: write raises ENOSPC."""
    room = 0

    def write(self, b):
        _FullDisk.room -= len(b)
        if _FullDisk.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(b)


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_old_one(pairs, tmp_path,
                                                                          monkeypatch):
    out = tmp_path / "run"
    assert train("--data", pairs, "--max-steps", 1, "-o", out).exit_code == 0
    before = (out / "checkpoints" / "latest.pt").read_bytes()
    # torch.save itself runs; only the bytes hit a full disk after 4 kB.
    _FullDisk.room = 4096
    monkeypatch.setattr(checkpoint, "open", lambda p, mode: _FullDisk(p, mode), raising=False)
    r = train("--resume", "-o", out, "--max-steps", 2)
    assert r.exit_code == 1
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in r.output, r.output
    assert errors[0].startswith(f"Error: {out / 'checkpoints' / 'latest.pt'}: cannot write: "
                                "No space left on device (the file system mounted at /")
    assert "MiB free" in errors[0] and "the previous file is kept" in errors[0]
    assert (out / "checkpoints" / "latest.pt").read_bytes() == before
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["latest.pt"]  # no temp left
    assert checkpoint.load_checkpoint(out / "checkpoints" / "latest.pt")["step"] == 1
