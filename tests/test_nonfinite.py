"""Issue 22, finding 1: NaN never passes as success.

A run that goes non-finite stops with one line and keeps its last finite checkpoint; PSNR of
a NaN is NaN (never the cap); the engine refuses non-finite outputs, so p2p-translate and
p2p-serve fail that image; the exporter verifies nothing made of NaN.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from p2p.runtime import metrics
from p2p.runtime.engine import Engine
from p2p.runtime.errors import NonFiniteOutput
from p2p.trainer import train as train_mod
from p2p.trainer.finite import finite

from test_train import TINY, make_pairs, run


@pytest.fixture
def pairs(tmp_path):
    return make_pairs(tmp_path / "d" / "train", 4).parent


def _all_finite(ckpt) -> bool:
    state = torch.load(ckpt, weights_only=True)
    return all(torch.isfinite(v).all() for net in ("generator", "discriminator")
               for v in state[net].values() if v.is_floating_point())


def test_lr_1e30_stops_with_one_line_and_saves_nothing_non_finite(pairs, tmp_path):
    out = tmp_path / "run"
    r = run("--data", pairs, *TINY, "--lr", "1e30", "--max-steps", 6, "--save-every", 1,
            "--log-every", 1, "--sample-every", 0, "--workers", 0, "-o", out, ok=False)
    assert r.exit_code == 1, r.output
    line, = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert line.startswith("Error: step ") and "training diverged" in line, r.output
    assert "non-finite loss (loss_" in line or "weights became NaN or Inf" in line
    assert "done:" not in r.output
    latest = out / "checkpoints" / "latest.pt"
    if latest.exists():  # whatever was saved before the divergence is finite
        assert _all_finite(latest)
    log = out / "metrics.jsonl"
    rows = log.read_text() if log.exists() else ""
    assert "NaN" not in rows and "Infinity" not in rows


def test_divergence_names_step_and_loss_keeps_last_checkpoint_and_resume_works(
        pairs, tmp_path, monkeypatch):
    real_step = train_mod.train_step

    def diverging(t, a, b):  # step 3 produces NaN losses and NaN weights
        losses = real_step(t, a, b)
        if t.step == 2:
            with torch.no_grad():
                for p in t.G.parameters():
                    p.fill_(float("nan"))
            return torch.tensor([float("nan"), float("nan"), 0.5, float("inf")])
        return losses

    out = tmp_path / "run"
    common = ["--data", pairs, *TINY, "--save-every", 1, "--log-every", 1, "--sample-every", 0,
              "--workers", 0, "-o", out]
    monkeypatch.setattr(train_mod, "train_step", diverging)
    r = run(*common, "--max-steps", 5, ok=False)
    assert r.exit_code == 1
    latest = out / "checkpoints" / "latest.pt"
    assert [ln for ln in r.output.splitlines() if ln.startswith("Error:")] == [
        "Error: step 3: non-finite loss (loss_G_GAN nan, loss_G_L1 nan, loss_D_fake inf): "
        "training diverged (too high --lr?) and stopped; nothing non-finite was saved; the "
        f"last finite checkpoint {latest} (step 2) is kept; --resume continues from it"]
    assert torch.load(latest, weights_only=True)["step"] == 2 and _all_finite(latest)
    monkeypatch.setattr(train_mod, "train_step", real_step)
    run("--resume", *common, "--max-steps", 5)
    assert torch.load(latest, weights_only=True)["step"] == 5 and _all_finite(latest)


def test_weights_gone_non_finite_with_finite_losses_are_not_saved(pairs, tmp_path,
                                                                 monkeypatch):
    real_step = train_mod.train_step

    def breaks_weights(t, a, b):  # the update of step 2 breaks D; its losses were finite
        losses = real_step(t, a, b)
        if t.step == 1:
            with torch.no_grad():
                next(t.D.parameters()).view(-1)[0] = float("inf")
        return losses

    monkeypatch.setattr(train_mod, "train_step", breaks_weights)
    out = tmp_path / "run"
    r = run("--data", pairs, *TINY, "--save-every", 1, "--sample-every", 0, "--workers", 0,
            "--max-steps", 4, "-o", out, ok=False)
    assert r.exit_code == 1
    assert "Error: step 2: the discriminator weights became NaN or Inf" in r.output
    assert torch.load(out / "checkpoints" / "latest.pt", weights_only=True)["step"] == 1


def test_finite_sees_batchnorm_statistics():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.BatchNorm2d(1))
    assert finite(net)
    net[1].running_var.fill_(float("nan"))
    assert not finite(net)


def test_psnr_of_nan_or_inf_is_nan_never_the_cap():
    a = np.zeros((2, 3, 4, 4), np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[0, 0, 0, 0] = bad
        assert math.isnan(metrics.psnr(a, b, data_range=2.0, cap=math.inf))
        assert math.isnan(metrics.psnr(b, a))  # p2p-eval's capped form too
        assert not metrics.psnr(a, b) >= 0  # how every check is written
    assert metrics.psnr(a, a) == metrics.PSNR_CAP  # identical finite images still cap


# --- the engine: one check that translate and serve both reach --------------------------

def _nan_model(path):
    from onnx_models import constant_model

    return constant_model(path, [np.nan] * 3, image_size=8, size_multiple=8)  # all NaN


def test_engine_refuses_non_finite_outputs(tmp_path):
    from onnx_models import identity_model

    x = np.zeros((3, 3, 8, 8), np.float32)
    with Engine(identity_model(tmp_path / "id.onnx", image_size=8, size_multiple=8), "cpu",
                batch_size=2) as engine:
        assert np.isfinite(engine.run(x)).all()
        x[1, 0, 0, 0] = np.inf  # one image of three
        with pytest.raises(NonFiniteOutput, match=r"id\.onnx: the model's output holds NaN "
                           r"or Inf for 1 of 3 images"):
            engine.run(x)
    with Engine(_nan_model(tmp_path / "nan.onnx"), "cpu", batch_size=2) as engine:
        with pytest.raises(NonFiniteOutput, match=r"for 3 of 3 images"):
            engine.run(np.zeros((3, 3, 8, 8), np.float32))


def test_translate_fails_each_image_of_a_nan_model(tmp_path):
    from click.testing import CliRunner

    from p2p.cli.translate import main as translate_cli

    model = _nan_model(tmp_path / "nan.onnx")
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 40, 9, 9)).save(src / f"{i}.png")
    r = CliRunner().invoke(translate_cli, [str(src), "--model", str(model), "-o",
                                           str(tmp_path / "out"), "--provider", "cpu"])
    assert r.exit_code == 1, r.output
    assert r.output.count("the model's output holds NaN or Inf") == 3, r.output
    assert not list((tmp_path / "out").glob("*.png"))  # no black images


def test_serve_answers_a_nan_model_with_an_error_not_a_black_image(tmp_path):
    import io

    import httpx

    from serve_helpers import live_server

    engine = Engine(_nan_model(tmp_path / "nan.onnx"), "cpu", batch_size=4, threads=1,
                    cache_dir=tmp_path / "cache")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 9, 9)).save(buf, "PNG")
    with live_server(engine) as (url, _):
        r = httpx.post(url + "/translate", content=buf.getvalue(), timeout=30)
    assert r.status_code >= 500 and not r.headers["content-type"].startswith("image/")
    assert "the model's output holds NaN or Inf for 1 of 1 images" in r.json()["error"]


# --- the exporter verifies nothing made of NaN --------------------------------------------

def test_fp16_whose_emulated_run_is_nan_is_not_written(tmp_path, monkeypatch, capsys):
    """The issue's case: an all-NaN FP16 emulation was 'PSNR inf dB' and verified=true."""
    from p2p.export import verify
    from p2p.export.onnx import ExportConfig, main as export
    from p2p.runtime.errors import ExportError
    from p2p.runtime.modelfile import read_metadata
    from test_export import make_checkpoint

    monkeypatch.setattr(verify, "emulate", lambda model, x: np.full(
        (len(x), 3, *x.shape[2:]), np.nan, np.float32))
    ckpt = make_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt", size=32)
    out = tmp_path / "e" / "g.onnx"
    with pytest.raises(ExportError) as e:
        export(ExportConfig(source=ckpt, output=out, fp16=True))
    assert str(e.value) == ("not written: g.fp16.onnx: verification failed: FP16 emulated: "
                            "output not finite (NaN or Inf) (wrote g.onnx)")
    assert "PSNR nan dB" in capsys.readouterr().out  # the number is shown as it is
    assert sorted(p.name for p in out.parent.iterdir()) == ["g.onnx"]
    assert read_metadata(out).verified


@pytest.mark.parametrize("key", ["psnr_b1", "max_abs_bn", "psnr_gpu", "invariance",
                                 "invariance_ov", "psnr_ov"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_no_check_passes_on_nan(key, precision):
    from p2p.export.verify import _failures

    good = {"batch": 4, "invariance": 0.0, "invariance_ov": 0.0}
    for k in ("b1", "bn", "gpu", "ov"):
        good[f"psnr_{k}"], good[f"max_abs_{k}"] = 90.0, 1e-6
    assert _failures(good, precision) == []
    for value in (math.nan, math.inf) if not key.startswith("psnr") else (math.nan,):
        assert _failures({**good, key: value}, precision), (key, value)


def test_a_nan_checkpoint_verifies_nothing_and_no_verify_files_fail_every_image(tmp_path):
    from click.testing import CliRunner

    from p2p.cli.translate import main as translate_cli
    from p2p.export.onnx import ExportConfig, main as export
    from p2p.runtime.errors import ExportError
    from p2p.runtime.modelfile import read_metadata
    from p2p.trainer.checkpoint import load_state, save_checkpoint
    from test_export import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt", size=32)
    state = load_state(ckpt)
    for v in state["generator"].values():
        if v.is_floating_point():
            v.fill_(float("nan"))
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "format_version")},
                    ckpt)
    out = tmp_path / "e" / "g.onnx"
    with pytest.raises(ExportError, match="the checkpoint's generator gives NaN or Inf in "
                       "PyTorch .*no file can be verified"):
        export(ExportConfig(source=ckpt, output=out))
    assert not out.parent.exists()
    export(ExportConfig(source=ckpt, output=out, verify=False))  # the user's own risk...
    assert not read_metadata(out).verified
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(src / "x.png")
    r = CliRunner().invoke(translate_cli, [str(src), "--model", str(out), "-o",
                                           str(tmp_path / "t"), "--provider", "cpu"])
    assert r.exit_code == 1 and "holds NaN or Inf" in r.output  # ...but no black image
    assert not list((tmp_path / "t").glob("*.png"))
