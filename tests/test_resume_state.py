"""Resume across machines and precisions (issue 15, point 3) and the CUDA numerics settings,
checked on the CPU through the checkpoint API with faked CUDA state."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from p2p.cli.train import main as train_cli
from p2p.runtime.errors import ProviderError
from p2p.trainer import checkpoint, device as precision
from p2p.trainer.models import ModelConfig
from p2p.trainer.train import TrainConfig, Trainer

CFG = TrainConfig(data="d", image_size=32, load_size=36, ngf=4, ndf=4)
MODEL = ModelConfig(image_size=32, ngf=4, ndf=4)
TASK = {"direction": "AtoB", "color_space": "rgb", "data": "d"}
CPU = torch.device("cpu")


def saved(state: dict, tmp_path: Path) -> dict:
    """Through the file format: save, then load as --resume does."""
    return checkpoint.load_checkpoint(checkpoint.save_checkpoint(state, tmp_path / "latest.pt"))


def test_amp_resume_of_a_run_saved_without_amp(tmp_path):
    # What the guard is for: torch refuses an empty scaler state with a RuntimeError.
    with pytest.raises(RuntimeError, match="empty"):
        torch.amp.GradScaler("cpu").load_state_dict({})
    state = saved(Trainer(CFG, MODEL, TASK, CPU).state_dict(), tmp_path)
    assert state["scaler_g"] == {} and state["scaler_d"] == {}
    amp = Trainer(replace(CFG, amp=True), MODEL, TASK, CPU)  # GradScaler("cpu") exists
    amp.load_state_dict(state, tmp_path / "latest.pt")
    assert amp.scaler_g.is_enabled() and amp.scaler_g.get_scale() == 2.0 ** 16  # fresh
    # An AMP run's scaler state still comes back.
    amp.scaler_g.scale(torch.ones(1))
    amp.scaler_g.update(new_scale=1024.0)
    again = Trainer(replace(CFG, amp=True), MODEL, TASK, CPU)
    again.load_state_dict(saved(amp.state_dict(), tmp_path), tmp_path / "latest.pt")
    assert again.scaler_g.get_scale() == 1024.0 and again.scaler_d.get_scale() == 2.0 ** 16


def test_only_the_training_devices_cuda_rng_is_saved_and_restored(tmp_path, monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state",
                        lambda device: torch.full((16,), device.index, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: restored.append((int(state[0]), device)))
    rng = checkpoint.rng_state(torch.device("cuda", 3))
    assert len(rng["cuda"]) == 1 and int(rng["cuda"][0][0]) == 3
    assert checkpoint.rng_state(CPU)["cuda"] == []
    # A checkpoint from an 8-GPU machine (one state per visible GPU, as p2p saved before),
    # resumed where one GPU is visible: its first state goes to the training device.
    state = Trainer(CFG, MODEL, TASK, CPU).state_dict()
    state["rng"]["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]
    state = saved(state, tmp_path)
    checkpoint.set_rng_state(state["rng"], torch.device("cuda", 0))
    assert restored == [(0, torch.device("cuda", 0))]
    Trainer(CFG, MODEL, TASK, CPU).load_state_dict(state, tmp_path / "latest.pt")
    assert len(restored) == 1  # a CPU run restores no CUDA state


@pytest.fixture
def cuda_flags():
    """configure() sets process-wide flags: give other tests theirs back."""
    before = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.fp32_precision,
              torch.backends.cudnn.conv.fp32_precision)
    yield
    torch.backends.cudnn.benchmark = before[0]
    torch.backends.cuda.matmul.fp32_precision = before[1]
    torch.backends.cudnn.conv.fp32_precision = before[2]


def test_cuda_runs_autotune_and_fp32_is_ieee_unless_tf32(cuda_flags):
    # torch's own default: cuDNN convolutions in TF32; so an unsaid "FP32" was not FP32.
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    precision.configure(torch.device("cuda"), tf32=False)  # flags only: no GPU needed
    assert torch.backends.cudnn.benchmark
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    precision.configure(torch.device("cuda", 1), tf32=True)
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    with pytest.raises(ProviderError, match="--tf32: TensorFloat-32 is an NVIDIA GPU mode"):
        precision.configure(CPU, tf32=True)


def test_tf32_off_cuda_is_one_line(tmp_path):
    r = CliRunner().invoke(train_cli, ["--data", str(tmp_path), "--device", "cpu", "--tf32"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [
        "Error: --tf32: TensorFloat-32 is an NVIDIA GPU mode, and this run is on cpu; drop "
        "--tf32 or use --device cuda"]
