"""Fine-tuning (--init-from) and longer schedules (--resume with more epochs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from p2p.cli.export import main as export_cli
from p2p.runtime.host import file_sha256
from p2p.runtime.modelfile import read_metadata
from p2p.trainer.models import ModelConfig, PatchDiscriminator
from reference_nets import JunyanzUnetGenerator, junyanz_norm
from test_export import liven
from test_train import TINY, losses, make_pairs, run

LR = 2e-4


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def pairs(tmp_path):
    make_pairs(tmp_path / "d" / "train", 6)
    make_pairs(tmp_path / "d" / "val", 2, seed=1)
    return tmp_path / "d"


def linear_decay(epoch: int, epochs: int, epochs_decay: int) -> float:
    """The reference's LambdaLR rule, written out: 1, then down by 1/(decay + 1) per epoch."""
    return LR * (1.0 - max(0, epoch + 1 - epochs) / (epochs_decay + 1))


def lr_rows(out: Path) -> list[dict]:
    return [r for r in losses(out) if "lr" in r]


def test_extending_a_finished_run_continues_the_lr_rule(pairs, tmp_path):
    out = tmp_path / "run"
    # 6 pairs at batch 1: 6 steps an epoch; 1 + 1 epochs = 12 steps.
    run("--data", pairs, *TINY, "--epochs", 1, "--epochs-decay", 1, "--log-every", 1,
        "--sample-every", 0, "--workers", 0, "-o", out)
    r = run("--resume", "-o", out)
    assert "already at step 12 of 12" in r.output and "--epochs-decay" in r.output
    assert "--max-steps" not in r.output  # raising it could not help
    # Two more constant epochs and one more decay epoch: 2 + 2 epochs, 24 steps in all.
    r = run("--resume", "-o", out, "--epochs", 2, "--epochs-decay", 2)
    assert "resuming" in r.output and "step 12" in r.output
    rows = lr_rows(out)
    assert [row["step"] for row in rows] == list(range(1, 25))
    want = [linear_decay(e, 1, 1) for e in (0, 1)] + [linear_decay(e, 2, 2) for e in (2, 3)]
    assert [row["lr"] for row in rows] == pytest.approx([w for w in want for _ in range(6)],
                                                        rel=1e-12)
    assert [row["epoch"] for row in rows] == [e for e in range(4) for _ in range(6)]
    cfg = json.loads((out / "config.json").read_text())["train"]
    assert (cfg["epochs"], cfg["epochs_decay"]) == (2, 2)
    state = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    assert (state["step"], state["epoch"]) == (24, 4)


def test_extending_an_interrupted_run_mid_epoch(pairs, tmp_path):
    out = tmp_path / "run"
    run("--data", pairs, *TINY, "--epochs", 1, "--epochs-decay", 1, "--log-every", 1,
        "--sample-every", 0, "--workers", 0, "--max-steps", 9, "-o", out)
    r = run("--resume", "-o", out)
    assert "already at step 9 of 9" in r.output and "raise --max-steps" in r.output
    run("--resume", "-o", out, "--epochs-decay", 3, "--max-steps", 0)
    rows = lr_rows(out)
    assert [row["step"] for row in rows] == list(range(1, 25))  # 1 + 3 epochs
    lrs = [row["lr"] for row in rows]
    # Steps 7-9 ran under the old rule; from the resume on, the new rule, epoch by epoch.
    assert lrs[6:9] == pytest.approx([linear_decay(1, 1, 1)] * 3, rel=1e-12)
    assert lrs[9:] == pytest.approx([linear_decay(1, 1, 3)] * 3 + [
        linear_decay(e, 1, 3) for e in (2, 3) for _ in range(6)], rel=1e-12)


def reference_files(folder: Path, ngf: int = 8, size_downs: int = 5):
    """A junyanz-format G (their network, ngf 8, U-Net-32) and a D in their layout."""
    folder.mkdir(parents=True, exist_ok=True)
    g = liven(JunyanzUnetGenerator(3, 3, size_downs, ngf, junyanz_norm("batch"),
                                   use_dropout=True), 3)
    d = liven(PatchDiscriminator(ModelConfig(image_size=32, ndf=8)), 4)
    torch.save(g.state_dict(), folder / "latest_net_G.pth")
    torch.save(d.state_dict(), folder / "latest_net_D.pth")
    return folder / "latest_net_G.pth", folder / "latest_net_D.pth", g, d


def test_fine_tune_from_a_reference_generator_then_export(pairs, tmp_path, monkeypatch):
    monkeypatch.setenv("P2P_CACHE", str(tmp_path / "cache"))  # export's checks: not ~/.cache
    g_path, d_path, g, d = reference_files(tmp_path / "ref")
    args = ["--data", pairs, "--image-size", 32, "--load-size", 36, "--ngf", 8, "--ndf", 8,
            "--quiet", "--threads", 1, "--workers", 0, "--sample-every", 0,
            "--init-from", g_path, "--init-from-d", d_path]
    # LR 0: one step changes no weight, so the run's networks are the files' exactly.
    frozen = tmp_path / "frozen"
    r = run(*args, "--lr", 0, "--max-steps", 1, "-o", frozen)
    assert "fresh optimizers and schedule" in r.output
    state = torch.load(frozen / "checkpoints" / "latest.pt", weights_only=True)
    for net, key in ((g, "generator"), (d, "discriminator")):
        for name, p in net.named_parameters():
            assert torch.equal(state[key][name], p.detach()), (key, name)
    # Fine-tune for real: a few steps, then the run exports like any other.
    out = tmp_path / "tuned"
    run(*args, "--max-steps", 3, "-o", out)
    state = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    assert state["step"] == 3 and state["epoch"] == 0
    assert state["opt_g"]["state"][0]["step"].item() == 3  # a fresh optimizer
    init = json.loads((out / "config.json").read_text())["task"]["init"]
    assert init == {"generator": str(g_path), "generator_sha256": file_sha256(g_path),
                    "format": "junyanz", "step": 0, "discriminator": str(d_path),
                    "discriminator_sha256": file_sha256(d_path)}
    r = CliRunner().invoke(export_cli, [str(out), "-o", str(tmp_path / "g.onnx")])
    assert r.exit_code == 0, r.output
    assert read_metadata(tmp_path / "g.onnx").training_step == 3
    # Fine-tuning a p2p checkpoint: its D comes along; its architecture must match.
    run(*args[:-4], "--init-from", out / "checkpoints" / "latest.pt", "--max-steps", 1,
        "-o", tmp_path / "again")
    init = json.loads((tmp_path / "again" / "config.json").read_text())["task"]["init"]
    assert (init["format"], init["step"]) == ("p2p", 3)
    r = run(*args[:-4], "--ngf", 4, "--init-from", out / "checkpoints" / "latest.pt",
            "-o", tmp_path / "bad", ok=False)
    assert r.exit_code == 1 and "records ngf=8" in r.output and "pass --ngf 8" in r.output


def test_wrong_architecture_flags_get_the_exporters_hint(pairs, tmp_path):
    g_path, _, _, _ = reference_files(tmp_path / "ref")
    r = run("--data", pairs, *TINY, "--init-from", g_path, "--max-steps", 1,
            "-o", tmp_path / "run", ok=False)  # TINY says ngf 4; the file is ngf 8
    assert r.exit_code == 1
    assert ("the file looks like --ngf 8 --in-channels 3 --out-channels 3 --image-size 32 "
            "--norm batch") in r.output
    assert len([ln for ln in r.output.splitlines() if ln.startswith("Error")]) == 1
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_init_from_cannot_apply_to_a_resumed_run(pairs, tmp_path):
    g_path, _, _, _ = reference_files(tmp_path / "ref")
    out = tmp_path / "run"
    run("--data", pairs, *TINY, "--max-steps", 1, "--workers", 0, "-o", out)
    r = run("--resume", "-o", out, "--init-from", g_path, "--max-steps", 2, ok=False)
    assert r.exit_code == 1 and "--init-from starts a new run" in r.output


def test_init_from_takes_the_architecture_its_files_record(pairs, tmp_path):
    # A p2p run at ngf 8 / ndf 4, 32 px with --load-size 36 ...
    first = tmp_path / "first"
    run("--data", pairs, "--image-size", 32, "--load-size", 36, "--ngf", 8, "--ndf", 4,
        "--quiet", "--threads", 1, "--workers", 0, "--sample-every", 0, "--max-steps", 1,
        "-o", first)
    # ... fine-tuned without repeating any of it: the flags come from the checkpoint.
    out = tmp_path / "tuned"
    r = run("--data", pairs, "--threads", 1, "--workers", 0, "--sample-every", 0,
            "--max-steps", 1, "--init-from", first / "checkpoints" / "latest.pt", "-o", out)
    assert "--ngf 8, --ndf 4, --image-size 32, --load-size 36 (as it records)" in r.output
    cfg = json.loads((out / "config.json").read_text())
    assert {k: cfg["train"][k] for k in ("ngf", "ndf", "image_size", "load_size")} == \
        {"ngf": 8, "ndf": 4, "image_size": 32, "load_size": 36}
    # A junyanz generator shows its ngf and size; its D its ndf.
    g_path, d_path, _, _ = reference_files(tmp_path / "ref", ngf=8)
    out = tmp_path / "ref-tuned"
    r = run("--data", pairs, "--quiet", "--threads", 1, "--workers", 0, "--sample-every", 0,
            "--max-steps", 1, "--init-from", g_path, "--init-from-d", d_path, "-o", out)
    cfg = json.loads((out / "config.json").read_text())["train"]
    assert (cfg["ngf"], cfg["ndf"], cfg["image_size"], cfg["load_size"]) == (8, 8, 32, 36)
