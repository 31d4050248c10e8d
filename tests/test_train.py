"""p2p-train end to end with tiny models: run folder, exact resume, schedule, errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from p2p.cli.train import main as train_cli
from p2p.trainer import train as train_mod
from p2p.trainer.models import ModelConfig, UnetGenerator
from p2p.trainer.samples import per_image_norm
from p2p.trainer.train import lr_lambda

# One thread: tiny models on a loaded 2-core machine run several times faster than with two.
TINY = ["--image-size", "32", "--load-size", "36", "--ngf", "4", "--ndf", "4", "--quiet",
        "--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    """--threads sets torch's process-wide thread count; give other tests theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def make_pairs(folder: Path, n: int, size: int = 32, seed: int = 0) -> Path:
    """n side-by-side A|B pairs where B is a simple function of A (learnable)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        b = 255 - a
        Image.fromarray(np.concatenate([a, b], 1)).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture
def pairs(tmp_path):
    make_pairs(tmp_path / "d" / "train", 6)
    make_pairs(tmp_path / "d" / "val", 2, seed=1)
    return tmp_path / "d"


def run(*args, ok=True):
    r = CliRunner().invoke(train_cli, [str(a) for a in args])
    if ok:
        assert r.exit_code == 0, r.output + repr(r.exception)
    return r


def losses(out: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("images_per_s", None)
    return rows


def test_run_folder_and_lr_schedule(pairs, tmp_path):
    out = tmp_path / "run"
    # 6 pairs, 1 + 1 epochs = 12 steps: LR 2e-4 for steps 1-6, then 2e-4 * (1 - 1/2).
    run("--data", pairs, *TINY, "--epochs", 1, "--epochs-decay", 1, "--log-every", 1,
        "--sample-every", 5, "--save-every", 4, "--snapshot-every", 8, "--workers", 0,
        "-o", out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["image_size"] == 32 and cfg["task"]["color_space"] == "rgb"
    rows = [r for r in losses(out) if "lr" in r]
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert [r["lr"] for r in rows] == [2e-4] * 6 + [1e-4] * 6
    assert set(rows[0]) == {"step", "epoch", "loss_G_GAN", "loss_G_L1", "loss_D_real",
                            "loss_D_fake", "lr"}
    assert all(np.isfinite(r[k]) for r in rows for k in r)
    val = [r["step"] for r in losses(out) if "val_L1" in r]
    assert val == [0, 5, 10, 12]  # and the last step, off the --sample-every grid
    samples = sorted(p.name for p in (out / "samples").iterdir())
    assert samples == ["step_000000.png", "step_000005.png", "step_000010.png",
                       "step_000012.png"]
    assert cfg["sample_source"] == "val" and cfg["sample_metric"] == "val_L1"
    # A step's loss line and sample line name one epoch (at step 12, an epoch's last).
    epochs = {}
    for r in losses(out):
        epochs.setdefault(r["step"], set()).add(r["epoch"])
    assert all(len(e) == 1 for e in epochs.values()) and epochs[12] == {1}, epochs
    assert Image.open(out / "samples" / "step_000010.png").size == (3 * 32, 2 * 32)
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["latest.pt", "step_000008.pt"]
    # Loadable without unpickling arbitrary objects, carrying the whole contract.
    state = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    assert state["step"] == 12 and state["epoch"] == 2
    assert state["task"] == {"direction": "AtoB", "color_space": "rgb", "data": str(pairs),
                             "data_root": str(pairs.resolve()),  # exports find it from anywhere
                             "input_depth": "uint8", "output_depth": "uint8"}
    assert state["model"]["ngf"] == 4 and state["train"]["l1_weight"] == 100.0
    for k in ("generator", "discriminator", "opt_g", "opt_d", "sched_g", "sched_d", "rng"):
        assert k in state
    assert isinstance(state["rng"]["numpy"][1], list) and len(state["rng"]["numpy"][1]) == 624
    assert torch.load(out / "checkpoints" / "step_000008.pt", weights_only=True)["step"] == 8
    if importlib.util.find_spec("tensorboard") is not None:
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_reference_lr_rule():
    rule = lr_lambda(100, 100)
    assert [rule(e) for e in (0, 99)] == [1.0, 1.0]
    assert rule(100) == pytest.approx(1 - 1 / 101) and rule(199) == pytest.approx(1 / 101)


@pytest.mark.slow
def test_resume_reproduces_an_uninterrupted_run(pairs, tmp_path):
    # 64 px: the U-Net has a dropout block, so the torch RNG state matters too.
    common = ["--data", pairs, *TINY, "--image-size", 64, "--load-size", 72, "--epochs", 1,
              "--epochs-decay", 1, "--log-every", 2, "--sample-every", 3, "--seed", 5]
    straight, split = tmp_path / "straight", tmp_path / "split"
    run(*common, "--max-steps", 10, "--workers", 0, "-o", straight)
    # Stop at step 5 (mid-epoch, mid log window), then resume in a worker process.
    run(*common, "--max-steps", 5, "--workers", 0, "-o", split)
    # A hard kill after the checkpoint leaves lines from the future, maybe a torn one.
    with open(split / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "epoch": 1, "loss_G_GAN": 9.0}\n{"step": 7, "ep')
    run("--resume", "-o", split, "--max-steps", 10, "--workers", 1, "--quiet")
    # The stop at step 5 was logged and sampled (the last step of that run); the partial
    # window stayed in the checkpoint, so every later line equals the uninterrupted run's.
    a, b = losses(straight), losses(split)
    assert [r["step"] for r in b].count(5) == 2
    b = [r for r in b if r["step"] != 5]
    assert len(a) == len(b) > 5
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys() and ra["step"] == rb["step"]
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=1e-6, abs=1e-7), (ra["step"], k)
    ga = torch.load(straight / "checkpoints" / "latest.pt", weights_only=True)["generator"]
    gb = torch.load(split / "checkpoints" / "latest.pt", weights_only=True)["generator"]
    assert all(torch.allclose(ga[k].float(), gb[k].float(), atol=1e-6) for k in ga)


def test_interrupt_saves_and_resume_continues(pairs, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_step = train_mod.train_step

    def stop_at_3(t, a, b):  # what the SIGINT handler does: finish this step, then stop
        t.stop = t.step + 1 == 3
        return real_step(t, a, b)

    monkeypatch.setattr(train_mod, "train_step", stop_at_3)
    r = run("--data", pairs, *TINY, "--max-steps", 6, "--workers", 0, "-o", out, ok=False)
    assert r.exit_code == 1 and "interrupted at step 3" in r.output and "--resume" in r.output
    assert torch.load(out / "checkpoints" / "latest.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(train_mod, "train_step", real_step)
    r = run("--resume", "--data", pairs, "-o", out)  # ngf etc. come from the run's config
    assert "resuming" in r.output and "step 3" in r.output
    assert torch.load(out / "checkpoints" / "latest.pt", weights_only=True)["step"] == 6
    # An existing run is never silently overwritten, and the recipe cannot change on resume.
    r = run("--data", pairs, *TINY, "-o", out, ok=False)
    assert r.exit_code == 1 and "already holds a run" in r.output
    r = run("--resume", "-o", out, "--ngf", 8, "--max-steps", 9, ok=False)
    assert r.exit_code == 1 and "ngf=4 (asked 8)" in r.output


def test_l1_falls_when_fitting_a_tiny_set(tmp_path):
    make_pairs(tmp_path / "d", 2)
    out = tmp_path / "run"
    # A high LR so that 30 steps show it; the recipe's 2e-4 needs a few hundred.
    run("--data", tmp_path / "d", "--image-size", 32, "--load-size", 32, "--ngf", 8,
        "--ndf", 8, "--no-flip", "--max-steps", 30, "--log-every", 10, "--sample-every", 30,
        "--lr", 5e-3, "--workers", 0, "--quiet", "--threads", 1, "-o", out)
    l1 = [r["loss_G_L1"] for r in losses(out) if "loss_G_L1" in r]
    val = [r["train_L1"] for r in losses(out) if "train_L1" in r]  # no val/: not held out
    assert l1[-1] < 0.8 * l1[0] and val[-1] < 0.7 * val[0], (l1, val)


def test_two_folders_and_lab_colorization(tmp_path):
    rng = np.random.default_rng(0)
    for side in "ab":
        (tmp_path / side).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                tmp_path / side / f"{i}.png")
    run("--data-a", tmp_path / "a", "--data-b", tmp_path / "b", *TINY, "--max-steps", 2,
        "--workers", 0, "-o", tmp_path / "ab")
    run("--data", tmp_path / "a", "--lab-colorization", *TINY, "--max-steps", 2, "--workers",
        0, "-o", tmp_path / "lab")
    state = torch.load(tmp_path / "lab" / "checkpoints" / "latest.pt", weights_only=True)
    assert (state["model"]["in_channels"], state["model"]["out_channels"]) == (1, 2)
    assert state["task"]["color_space"] == "lab"
    grid = np.asarray(Image.open(tmp_path / "lab" / "samples" / "step_000000.png"))
    assert grid.shape == (64, 96, 3)
    assert np.array_equal(grid[..., 0, 0], grid[..., 0, 1])  # the L input is shown as grey
    target = np.asarray(Image.open(tmp_path / "a" / "0.png"), dtype=int)
    assert np.abs(grid[:32, 64:].astype(int) - target).max() <= 2  # target: RGB again


def test_samples_leave_training_state_untouched():
    torch.manual_seed(0)
    G = UnetGenerator(ModelConfig(image_size=32, ngf=4))
    G.train()
    x = torch.randn(1, 3, 32, 32)
    G(x)  # give the running statistics something non-trivial
    before = {k: v.clone() for k, v in G.state_dict().items()}
    rng = torch.get_rng_state()
    with per_image_norm(G):
        y1, y2 = G(x), G(x)
    assert torch.equal(y1, y2)  # dropout off: deterministic
    assert torch.equal(rng, torch.get_rng_state()) and G.training
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())
    G.eval()
    assert not torch.allclose(G(x), y1)  # not running statistics: the image's own


@pytest.mark.parametrize("args,message", [
    (["--device", "cuda"], "--device cuda: CUDA is not available"),
    (["--amp", "--device", "cpu"], "--amp: mixed precision needs CUDA"),
    (["--data", "facadez"], "allowed names: facades|cityscapes|maps|edges2shoes"),
    (["--data", "{tmp}/nope/"], "nope: no such data folder"),
    (["--data", "{tmp}/empty"], "empty: no images"),
    (["--data", "{tmp}/odd"], "odd/x.png: width 33 is odd"),
    (["--data", "{tmp}/trunc", "--workers", "1"], "trunc/x.png: unreadable image"),
    (["--data-a", "{tmp}/empty"], "--data-a and --data-b go together"),
    (["--image-size", "48"], "48 is not a power of two"),
    (["--resume"], "no run to resume here"),
    (["--lr", "nan"], "--lr nan: must be a number >= 0"),
    (["--lr", "-1"], "--lr -1.0: must be a number >= 0"),
    (["--beta1", "1.5"], "--beta1 1.5: must be in [0, 1)"),
    (["--epochs", "0", "--epochs-decay", "0"], "--epochs 0 --epochs-decay 0: nothing to train"),
    (["--data-a", "{tmp}/odd", "--data-b", "{tmp}/odd/"], "--data-a and --data-b are one folder"),
    (["--data", "{tmp}/odd/x.png"], "odd/x.png: not a folder"),
])
def test_errors_are_one_line_and_exit_nonzero(tmp_path, pairs, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "odd").mkdir()
    Image.new("RGB", (33, 16)).save(tmp_path / "odd" / "x.png")
    make_pairs(tmp_path / "trunc", 1)
    raw = (tmp_path / "trunc" / "000.png").read_bytes()
    (tmp_path / "trunc" / "x.png").write_bytes(raw[: len(raw) // 2])
    args = [a.format(tmp=tmp_path) for a in args]
    if "--data" not in args and "--data-a" not in args:
        args += ["--data", str(pairs)]
    r = run(*TINY, *args, "--max-steps", 1, "-o", tmp_path / "run", ok=False)
    assert r.exit_code != 0 and message in r.output, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert len(lines) == 1 and "Traceback" not in r.output
    assert not (tmp_path / "run").exists() or "--resume" in args  # nothing left behind


def test_data_and_two_folders_exclude_each_other(tmp_path, pairs):
    make_pairs(tmp_path / "A", 2)
    r = run(*TINY, "--data", pairs, "--data-a", tmp_path / "A", "--data-b", tmp_path / "A",
            "--max-steps", 1, "-o", tmp_path / "run", ok=False)
    assert r.exit_code == 1 and "--data and --data-a/--data-b are two ways" in r.output


def test_resume_finds_the_runs_data_from_any_folder(tmp_path, monkeypatch):
    """--data as typed was relative to where the run started: a resume from elsewhere failed
    ('neither a data folder nor a known dataset name'), or trained on another folder of the
    same name, exit 0; the same folder spelled another way was refused. The run's recorded
    folder is used, and the data compare as the folders they name."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    make_pairs(here / "d", 3)
    make_pairs(elsewhere / "d", 5, seed=1)  # another folder that is also called d
    monkeypatch.chdir(here)
    out = tmp_path / "run"
    run(*TINY, "--data", "d", "--max-steps", 2, "--workers", 0, "-o", out)
    monkeypatch.chdir(elsewhere)
    run("--resume", "-o", out, "--max-steps", 4, "--quiet")
    config = json.loads((out / "config.json").read_text())
    assert config["data_path"] == str(here / "d") and config["train_images"] == 3
    run("--resume", "-o", out, "--data", here / "d", "--max-steps", 6, "--quiet")
    monkeypatch.chdir(here)
    run("--resume", "-o", out, "--data", "./d/", "--max-steps", 8, "--quiet")
    r = run("--resume", "-o", out, "--data", elsewhere / "d", "--max-steps", 10, "--quiet",
            ok=False)
    assert r.exit_code == 1 and f"data_root={str(here / 'd')!r}" in r.output


def test_console_error_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-c", "from p2p.cli.train import main; main()",
                        "--data", str(tmp_path / "missing"), "--device", "cpu"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == f"Error: {tmp_path / 'missing'}: no such data folder"


def test_resume_before_the_first_checkpoint_says_how_to_start_over(pairs, tmp_path):
    """Issue 14: a run killed after config.json but before its first checkpoint has nothing
    to resume; the one line says so and how to start over, and that advice works."""
    out = tmp_path / "run"
    common = ["--data", pairs, *TINY, "--max-steps", 1, "--workers", 0, "-o", out]
    run(*common)
    (out / "checkpoints" / "latest.pt").unlink()  # as if killed before the first save
    r = run("--resume", "-o", out, "--quiet", ok=False)
    assert r.exit_code == 1
    assert (
        f"Error: {out}: nothing to resume: the run stopped before its first checkpoint "
        f"({out / 'checkpoints' / 'latest.pt'} is written every --save-every steps, at the "
        "end and on Ctrl-C); start it over with --overwrite instead of --resume\n") in r.output
    assert "Traceback" not in r.output
    run(*common, "--overwrite")
    assert (out / "checkpoints" / "latest.pt").is_file()


def test_resume_of_an_earlier_versions_run_finds_its_data_from_any_folder(tmp_path,
                                                                         monkeypatch):
    """Runs made before checkpoints recorded data_root: config.json's data_path is the
    folder, so a resume from elsewhere neither fails nor trains on another d/."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    make_pairs(here / "d", 3)
    make_pairs(elsewhere / "d", 5, seed=1)
    monkeypatch.chdir(here)
    out = tmp_path / "run"
    run(*TINY, "--data", "d", "--max-steps", 2, "--workers", 0, "-o", out)
    latest = out / "checkpoints" / "latest.pt"
    state = torch.load(latest, weights_only=True)
    del state["task"]["data_root"], state["train_images"]  # as earlier versions wrote them
    torch.save(state, latest)
    config = json.loads((out / "config.json").read_text())
    del config["task"]["data_root"]
    (out / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(elsewhere)
    run("--resume", "-o", out, "--max-steps", 3, "--quiet")
    config = json.loads((out / "config.json").read_text())
    assert config["data_path"] == str(here / "d") and config["train_images"] == 3


def test_resume_on_data_of_another_size_is_refused_not_spun_on(tmp_path):
    """A run's steps count in its own epoch length: with fewer pairs a resume landed past
    the end of its epoch and spun without a step (a hang); with more it went on, exit 0.
    A resume that has nothing to do leaves the run's config.json as it was."""
    data = make_pairs(tmp_path / "d", 3)
    out = tmp_path / "run"
    run(*TINY, "--data", data, "--max-steps", 2, "--workers", 0, "-o", out)
    make_pairs(tmp_path / "more", 1, seed=3)
    (tmp_path / "more" / "000.png").rename(data / "extra.png")
    r = run("--resume", "-o", out, "--max-steps", 4, "--quiet", ok=False)
    assert r.exit_code == 1 and "the run's data now holds 4 training pairs, it had 3" in r.output
    (data / "extra.png").unlink()
    before = (out / "config.json").read_bytes()
    r = run("--resume", "-o", out, "--epochs", 0, "--epochs-decay", 0, "--quiet")
    assert "nothing to do" in r.output and (out / "config.json").read_bytes() == before
