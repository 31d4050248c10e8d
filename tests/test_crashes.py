"""kill -9 at controlled points of p2p-train, p2p-translate and p2p-export.

The tests do the killing: a child process runs the real command, the test waits for a
visible point (metrics lines, a checkpoint save half-written, an output between write and
rename, an export's temp file) and sends SIGKILL. Then: training resumes from the last
checkpoint and ends exactly where an uninterrupted run ends; translation reruns to completion
with every output whole; an export leaves nothing at its output path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from badfiles import noise
from onnx_models import slow_model

BIN = Path(sys.executable).parent
TINY = ["--image-size", "32", "--load-size", "36", "--ngf", "4", "--ndf", "4", "--threads", "1",
        "--workers", "0", "--quiet", "--sample-every", "0", "--device", "cpu", "--log-every", "1"]
STEPS = 14  # where every run of this file ends


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()  # p2p-train --threads is process-wide
    yield
    torch.set_num_threads(n)


def wait_for(cond, proc: subprocess.Popen, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the child ended (rc {proc.returncode}) before {what}: {out[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def train_cli(*args):
    from p2p.cli.train import main

    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


def steps_logged(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written right now
            pass
    return rows


def losses(run: Path) -> dict[int, list[float]]:
    return {r["step"]: [r[k] for k in ("loss_G_GAN", "loss_G_L1", "loss_D_real", "loss_D_fake")]
            for r in steps_logged(run) if "loss_G_L1" in r}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pairs")
    for i in range(6):
        Image.fromarray(noise(64, 32, i)).save(d / f"{i}.png")
    return d


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """An uninterrupted run of STEPS steps: what every resumed run must reproduce."""
    run = tmp_path_factory.mktemp("reference") / "run"
    n = torch.get_num_threads()
    try:
        r = train_cli("--data", data, *TINY, "--max-steps", STEPS, "--save-every", 2, "-o", run)
    finally:
        torch.set_num_threads(n)
    assert r.exit_code == 0, r.output
    return run


def assert_same_run(run: Path, reference: Path) -> None:
    got, want = losses(run), losses(reference)
    assert sorted(got) == list(range(1, STEPS + 1))  # every step logged once, none torn
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), step
    a = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(reference / "checkpoints" / "latest.pt", weights_only=True)
    assert a["step"] == b["step"] == STEPS
    for k, v in b["generator"].items():
        assert torch.allclose(a["generator"][k].float(), v.float(), atol=1e-5), k


@pytest.mark.slow
def test_kill_9_mid_training_then_resume_matches_an_uninterrupted_run(data, reference, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([str(BIN / "p2p-train"), "--data", str(data), *TINY, "--max-steps",
                             "100000", "--save-every", "2", "-o", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: len(steps_logged(run)) >= 5, proc, what="5 logged steps")
    kill9(proc)
    saved = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["step"]
    assert 2 <= saved < STEPS and saved % 2 == 0
    assert max(r["step"] for r in steps_logged(run)) >= saved  # lines past the checkpoint...
    r = train_cli("--resume", "-o", run, "--max-steps", STEPS)
    assert r.exit_code == 0, r.output
    assert f"resuming {run} at step {saved}" in r.output
    assert_same_run(run, reference)  # ...were redone, not kept twice


@pytest.mark.slow
def test_sigterm_saves_at_once_and_resume_matches(data, reference, tmp_path):
    """What a scheduler (SLURM, Kubernetes) sends before SIGKILL: finish the step, save, stop."""
    run = tmp_path / "run"
    proc = subprocess.Popen([str(BIN / "p2p-train"), "--data", str(data), *TINY, "--max-steps",
                             "100000", "--save-every", "100000", "-o", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: len(steps_logged(run)) >= 3, proc, what="3 logged steps")
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 1 and "Traceback" not in output
    step = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["step"]
    assert 3 <= step < STEPS
    assert f"Error: interrupted at step {step}; saved {run / 'checkpoints' / 'latest.pt'}; " \
           "continue with --resume" in output
    r = train_cli("--resume", "-o", run, "--max-steps", STEPS)
    assert r.exit_code == 0 and f"at step {step}" in r.output, r.output
    assert_same_run(run, reference)


# The child of the next test: p2p-train whose Nth checkpoint save writes half the file and
# then hangs, as if the disk stalled, so the test can kill it mid-save.
TORN_SAVE = """
import io, sys, time, torch
real_save, calls, stall_at = torch.save, [0], int(sys.argv[1])
def stalled_save(obj, f, *a, **k):
    calls[0] += 1
    if calls[0] == stall_at:
        buf = io.BytesIO()
        real_save(obj, buf)
        half = buf.getvalue()[: len(buf.getvalue()) // 2]
        if hasattr(f, "write"):  # save_checkpoint hands torch.save an open file
            f.write(half)
            f.flush()
        else:
            with open(f, "wb") as out:
                out.write(half)
        print("TORN", getattr(f, "name", f), flush=True)
        time.sleep(600)
    return real_save(obj, f, *a, **k)
torch.save = stalled_save
from p2p.cli.train import main
sys.argv = ["p2p-train"] + sys.argv[2:]
main()
"""


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_save_never_leaves_a_torn_checkpoint(data, reference,
                                                                        tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", TORN_SAVE, "5", "--data", str(data), *TINY,
                             "--max-steps", "100000", "--save-every", "1", "-o", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: proc.stdout.readline().startswith("TORN"), proc, what="the 5th save")
    kill9(proc)
    ckpts = run / "checkpoints"
    temps = [p for p in ckpts.iterdir() if p.name.startswith(".latest.pt.")]
    assert len(temps) == 1  # the half-written save, under its temp name only
    with pytest.raises(Exception):
        torch.load(temps[0], weights_only=True)
    # latest.pt is the 4th save, whole.
    assert torch.load(ckpts / "latest.pt", weights_only=True)["step"] == 4
    r = train_cli("--resume", "-o", run, "--max-steps", STEPS)
    assert r.exit_code == 0, r.output
    assert f"resuming {run} at step 4" in r.output
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest.pt"]  # the torn temp is gone
    assert_same_run(run, reference)


# The child of the next test: p2p-translate whose first rename of a finished output hangs, so
# the kill lands between writing an output's temp file and renaming it into place.
STALLED_RENAME = """
import os, sys, time
real_replace = os.replace
def stalled_replace(src, dst):
    if str(dst).endswith("3.png"):
        print("STALLED", src, flush=True)
        time.sleep(600)
    return real_replace(src, dst)
os.replace = stalled_replace
from p2p.cli.translate import main
sys.argv = ["p2p-translate"] + sys.argv[1:]
main()
"""


def test_kill_9_between_write_and_rename_then_rerun_completes(tmp_path):
    from p2p.cli.translate import main
    from p2p.runtime.files import TMP_SUFFIX

    model = slow_model(tmp_path / "m.onnx", depth=2, width=4)
    src = tmp_path / "in"
    want = {}
    for i in range(8):
        want[f"{i}.png"] = noise(32, 32, i)
        (src / f"{i}.png").parent.mkdir(exist_ok=True)
        Image.fromarray(want[f"{i}.png"]).save(src / f"{i}.png")
    out = tmp_path / "out"
    env = {**os.environ, "P2P_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-c", STALLED_RENAME, str(src), "--model",
                             str(model), "-o", str(out), "--batch-size", "2", "--workers", "1",
                             "-q"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    wait_for(lambda: proc.stdout.readline().startswith("STALLED"), proc,
             what="the rename of 3.png")
    kill9(proc)
    assert not (out / "3.png").exists()  # never under its final name
    temps = [p for p in out.iterdir() if p.name.endswith(TMP_SUFFIX)]
    assert [p.name.split(".")[1] for p in temps] == ["3"]  # .3.png.<pid>.<random>.tmp
    r = CliRunner(env={"P2P_CACHE": str(tmp_path / "cache")}).invoke(
        main, [str(src), "--model", str(model), "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    done_before = int(r.output.split("skipped ")[1].split(",")[0])
    assert f"translated {8 - done_before}, skipped {done_before}, failed 0" in r.output
    assert sorted(p.name for p in out.iterdir()) == sorted(want)  # the stale temp was removed
    for name in want:
        with Image.open(out / name) as im:
            im.load()  # whole files only
            assert im.size == (32, 32)


@pytest.mark.slow
def test_kill_9_during_export_leaves_nothing_at_the_output(reference, tmp_path, monkeypatch):
    from p2p.cli.translate import main as translate
    from p2p.runtime import files

    runs = tmp_path / "runs"
    (runs / "r").mkdir(parents=True)
    (runs / "r" / "checkpoints").mkdir()
    (runs / "r" / "checkpoints" / "latest.pt").write_bytes(
        (reference / "checkpoints" / "latest.pt").read_bytes())
    out = runs / "r" / "export" / "generator.onnx"
    env = {**os.environ, "P2P_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([str(BIN / "p2p-export"), str(runs / "r"), "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    temps = lambda: list(out.parent.glob(".generator.*.tmp.onnx")) if out.parent.exists() \
        else []  # noqa: E731
    wait_for(lambda: temps(), proc, timeout=120, what="the export's temp file")
    kill9(proc)
    assert not out.exists()
    assert len(temps()) == 1 and f".generator.onnx.{proc.pid}." in temps()[0].name
    # p2p-translate's default model search never picks the dead export's temp file...
    (tmp_path / "a.png").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(translate, [str(tmp_path / "a.png"), "-q"])
    assert r.exit_code == 1 and "no --model given and no *.onnx under runs/" in r.output
    # ...and the next export to that path removes it.
    mine = files.stage(out, keep_suffix=True)
    assert sorted(out.parent.iterdir()) == [mine]
    mine.unlink()


def test_a_killed_first_load_leaves_no_cache_garbage(tmp_path):
    """The optimised-graph cache is written to a temp file and renamed; a load killed in
    between leaves that temp file, which the next load removes (a live one's is kept)."""
    from p2p.runtime.engine import Engine

    model = slow_model(tmp_path / "m.onnx", depth=2, width=4)
    cache = tmp_path / "cache"
    (cache / "ort-cpu").mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is free again
    stale = cache / "ort-cpu" / f".0123456789abcdef01234567.onnx.{dead.pid}.tmp"
    live = cache / "ort-cpu" / f".0123456789abcdef01234567.onnx.{os.getpid()}.tmp"
    stale.write_bytes(b"half an optimised graph")
    live.write_bytes(b"being written by a running process")
    with Engine(model, "cpu", cache_dir=cache) as e:
        assert e._backend.cached_graph is not None
    assert not stale.exists() and live.exists()


def test_openvino_sessions_leave_the_signal_stack_alive(tmp_path):
    """OpenVINO's CPU plugin swaps the thread's signal alternate stack; two sessions collected
    in creation order used to leave it pointing at freed memory, so the next handled signal
    (SIGCHLD from a subprocess, Ctrl-C) killed the whole process with SIGSEGV."""
    import ctypes
    import gc
    import faulthandler

    pytest.importorskip("openvino")
    if not sys.platform.startswith("linux"):
        pytest.skip("stack_t layout and /proc/self/maps are Linux's")
    from p2p.runtime.backends.openvino import OpenVINOSession, _SignalStack

    def current_stack() -> tuple[int, bool]:
        st = _SignalStack()
        assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(st)) == 0
        sp = st.ss_sp or 0
        mapped = any(int(lo, 16) <= sp < int(hi, 16) for lo, hi in
                     (ln.split()[0].split("-") for ln in open("/proc/self/maps")))
        return sp, mapped

    faulthandler.enable()  # as under pytest: the thread has an alternate stack to lose
    before = current_stack()
    model = slow_model(tmp_path / "m.onnx", depth=2, width=4)
    first = OpenVINOSession(model, batch_size=2)
    second = OpenVINOSession(model, batch_size=2, subpixel=False)
    del first
    gc.collect()
    del second
    gc.collect()
    assert current_stack() == before and before[1]
