"""p2p-export: verified, batch-invariant, self-describing ONNX (tiny U-Nets, real numbers)."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from p2p.cli.export import main as cli
from p2p.export import onnx as export_onnx
from p2p.export import verify
from p2p.export.fp16 import emulate
from p2p.export.load import load, resolve
from p2p.runtime.engine import Engine
from p2p.runtime.host import file_sha256
from p2p.runtime.metadata import ModelMetadata
from p2p.runtime.modelfile import read_metadata
from p2p.trainer.checkpoint import save_checkpoint
from p2p.trainer.models import ModelConfig, UnetGenerator

SIZE, NGF = 64, 4  # U-Net-64: 6 downsamplings, one dropout block, 2x2 innermost norm


def liven(net: nn.Module, seed: int = 0) -> nn.Module:
    """Weights that keep activations O(1) through the U-Net (the paper's N(0, 0.02) init
    shrinks a random net's output to ~0, which would make every comparison trivially pass)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = m.weight[0].numel() if isinstance(m, nn.Conv2d) else \
                    m.weight.shape[0] * m.weight[0, 0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net


def make_checkpoint(path: Path, data=None, direction="BtoA", size=SIZE, step=123) -> Path:
    cfg = ModelConfig(image_size=size, ngf=NGF)
    g = liven(UnetGenerator(cfg))
    save_checkpoint({"model": asdict(cfg), "step": step, "generator": g.state_dict(),
                     "task": {"direction": direction, "color_space": "rgb", "data": data}},
                    path)
    return path


def images(n: int, h: int = SIZE, w: int = SIZE, seed: int = 1) -> np.ndarray:
    return np.stack(verify.smooth_images(n, 3, (h, w), seed=seed))


def run_cli(args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def train_mode_per_image(net: nn.Module, x: np.ndarray) -> np.ndarray:
    """The paper's test-time BN (batch statistics at batch 1), dropout off."""
    return verify.reference(net, x, "per-image")


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Engines built here (and in p2p-export's checks) keep their graphs out of ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("P2P_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def exported(tmp_path_factory, facades):
    """One run folder exported with defaults + --fp16 + --triton (the shared fixture)."""
    root = tmp_path_factory.mktemp("export")
    ckpt = make_checkpoint(root / "facades_run" / "checkpoints" / "latest.pt", data=str(facades))
    result = run_cli([root / "facades_run", "--fp16", "--triton", root / "triton"])
    assert result.exit_code == 0, result.output
    return {"root": root, "ckpt": ckpt, "out": root / "facades_run" / "export" / "generator.onnx",
            "fp16": root / "facades_run" / "export" / "generator.fp16.onnx",
            "log": result.output, "net": load(ckpt).generator}


@pytest.mark.slow
def test_default_export_prints_checks_on_val_images(exported):
    log = exported["log"]
    assert exported["out"].is_file() and exported["fp16"].is_file()
    assert "4 val images from" in log and "onnx.checker (full) ok" in log
    # every number printed, for both models: batch 1, batch 4, invariance
    assert len(re.findall(r"^    batch 1: max abs error [\d.e+-]+, PSNR [\d.]+ dB", log, re.M)) == 2
    assert len(re.findall(r"^    batch 4: max abs error [\d.e+-]+, PSNR [\d.]+ dB", log, re.M)) == 2
    assert log.count("batch invariance") == 2 and log.count("FP16 arithmetic emulated") == 1
    assert not list(exported["out"].parent.glob(".*"))  # no temp files left
    model = onnx.load(str(exported["out"]))
    assert model.opset_import[0].version == 17
    ops = {n.op_type for n in model.graph.node}
    assert "Dropout" not in ops and "BatchNormalization" not in ops
    assert "InstanceNormalization" in ops  # per-image normalisation, explicit


def test_per_image_is_batch_invariant_and_matches_the_paper(exported):
    x = images(5)
    ref = train_mode_per_image(exported["net"], x)
    assert ref.std() > 0.1  # a lively network, not a constant
    engine = Engine(exported["out"], provider="cpu", batch_size=5)
    together = engine.run(x)
    alone = np.concatenate([engine.run(x[k:k + 1]) for k in range(5)])
    assert np.abs(together - ref).max() <= 1e-4
    assert np.abs(alone - together).max() <= 1e-5
    # Changing the neighbours must not change image 0's output.
    other = images(5, seed=7)
    other[0] = x[0]
    assert np.abs(engine.run(other)[0] - together[0]).max() <= 1e-5
    # The trap the export avoids: train-mode BN over the batch couples the images.
    net = copy.deepcopy(exported["net"]).train()  # dropout on, batch statistics
    with torch.no_grad():
        batch_bn = net(torch.from_numpy(x)).numpy()
    assert np.abs(batch_bn[0] - ref[0]).max() > 1e-2


def test_fp16_model(exported):
    model = onnx.load(str(exported["fp16"]))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    conv_w = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    inits = {t.name: t.data_type for t in model.graph.initializer}
    assert {inits[w] for w in conv_w} == {onnx.TensorProto.FLOAT16}
    norm_in = {n.input[1] for n in model.graph.node if n.op_type == "InstanceNormalization"}
    assert {inits[s] for s in norm_in} == {onnx.TensorProto.FLOAT}  # reductions stay FP32
    assert exported["fp16"].stat().st_size < 0.6 * exported["out"].stat().st_size
    x = images(4, seed=3)
    ref = train_mode_per_image(exported["net"], x)
    engine = Engine(exported["fp16"], provider="cpu", batch_size=4)
    y = engine.run(x)
    assert y.dtype == np.float32
    assert 40 <= verify.psnr(y, ref) < 120  # FP16-accurate, and really FP16 (not exact)
    alone = np.concatenate([engine.run(x[k:k + 1]) for k in range(4)])
    assert np.abs(alone - y).max() <= verify.INVARIANCE_TOL["fp16"]


def test_fp16_emulation_is_exact_on_fp32_and_rounds_on_fp16(exported):
    """The GPU-like evaluator the FP16 bound is checked with: exact op semantics (it matches
    PyTorch on the FP32 file), and it really rounds activations on the FP16 file."""
    x = images(4, seed=5)
    ref = train_mode_per_image(exported["net"], x)
    assert np.abs(emulate(onnx.load(str(exported["out"])), x) - ref).max() <= 1e-5
    fp16 = onnx.load(str(exported["fp16"]))
    cpu = Engine(exported["fp16"], provider="cpu", batch_size=4).run(x)
    gpu_like = emulate(fp16, x)
    assert 40 <= verify.psnr(gpu_like, ref) < verify.psnr(cpu, ref)
    assert "FP16 arithmetic emulated" in exported["log"]


def test_metadata_round_trip(exported):
    model = onnx.load(str(exported["out"]))
    props = {p.key: p.value for p in model.metadata_props}
    meta = ModelMetadata.from_props(props)
    assert meta == Engine(exported["out"], provider="cpu").metadata
    assert (meta.direction, meta.image_size, meta.size_multiple, meta.dynamic_size) == \
        ("BtoA", SIZE, SIZE, False)
    assert (meta.norm_mode, meta.color_space, meta.source) == ("per-image", "rgb", "p2p")
    assert (meta.input_dtype, meta.output_dtype, meta.training_step) == \
        ("float32", "float32", 123)
    assert meta.checkpoint_sha256 == file_sha256(exported["ckpt"])
    assert meta.p2p_version and (meta.input_name, meta.output_name) == ("input", "output")
    fp16 = Engine(exported["fp16"], provider="cpu").metadata
    assert (fp16.input_dtype, fp16.output_dtype) == ("float16", "float32")


def parse_pbtxt(text: str) -> dict:
    """A small protobuf text-format reader: every field -> list of values/messages."""
    tokens = re.findall(r'"[^"]*"|[{}\[\]:,]|[^\s{}\[\]:,"]+',
                        "\n".join(line.split("#")[0] for line in text.splitlines()))
    pos = 0

    def value():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            return message("}")
        if tok.startswith('"'):
            return tok[1:-1]
        return int(tok) if re.fullmatch(r"-?\d+", tok) else tok

    def message(end):
        nonlocal pos
        out = {}
        while pos < len(tokens) and tokens[pos] != end:
            name = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            if tokens[pos] == "[":
                pos += 1
                while tokens[pos] != "]":
                    out.setdefault(name, []).append(value())
                    if tokens[pos] == ",":
                        pos += 1
                pos += 1
            else:
                out.setdefault(name, []).append(value())
        pos += 1
        return out

    return message(None)


def test_triton_repository_layout(exported):
    repo = exported["root"] / "triton"
    assert sorted(p.name for p in repo.iterdir()) == ["facades_run", "facades_run_fp16"]
    for name, dtype, src, precision in (
            ("facades_run", "TYPE_FP32", exported["out"], "FP32"),
            ("facades_run_fp16", "TYPE_FP16", exported["fp16"], "FP16")):
        assert (repo / name / "1" / "model.onnx").read_bytes() == src.read_bytes()
        cfg = parse_pbtxt((repo / name / "config.pbtxt").read_text())
        assert cfg["name"] == [name] and cfg["platform"] == ["onnxruntime_onnx"]
        assert cfg["max_batch_size"] == [16]
        (inp,), (out,) = cfg["input"], cfg["output"]
        assert (inp["name"], inp["data_type"], inp["dims"]) == (["input"], [dtype], [3, SIZE, SIZE])
        assert (out["name"], out["data_type"], out["dims"]) == \
            (["output"], ["TYPE_FP32"], [3, SIZE, SIZE])
        assert max(cfg["dynamic_batching"][0]["preferred_batch_size"]) <= 16
        (acc,) = cfg["optimization"][0]["execution_accelerators"][0]["gpu_execution_accelerator"]
        params = {p["key"][0]: p["value"][0] for p in acc["parameters"]}
        # TensorRT runs the model's own precision (issue 14, fault 10), builds one engine
        # for the whole batch range Triton forms, and caches it one level under /tmp (the EP
        # creates that level; nothing above it needs to exist in a fresh container).
        assert acc["name"] == ["tensorrt"] and params["precision_mode"] == precision
        assert params["trt_profile_min_shapes"] == f"input:1x3x{SIZE}x{SIZE}"
        assert params["trt_profile_opt_shapes"] == f"input:16x3x{SIZE}x{SIZE}"
        assert params["trt_profile_max_shapes"] == f"input:16x3x{SIZE}x{SIZE}"
        cache = Path(params["trt_engine_cache_path"])
        assert cache.is_absolute() and cache.parent == Path("/tmp") and name in cache.name


def test_triton_config_of_a_dynamic_size_model_and_the_fp16_flag():
    from onnx_models import metadata
    from p2p.export.triton import config_pbtxt

    meta = metadata(dynamic_size=True, image_size=256, size_multiple=256)
    cfg = parse_pbtxt(config_pbtxt("m", meta, 8, trt_fp16=True))
    (acc,) = cfg["optimization"][0]["execution_accelerators"][0]["gpu_execution_accelerator"]
    params = {p["key"][0]: p["value"][0] for p in acc["parameters"]}
    assert cfg["input"][0]["dims"] == [3, -1, -1]
    assert params["precision_mode"] == "FP16"  # the flag, over the FP32 model
    assert params["trt_profile_min_shapes"] == "input:1x3x256x256"
    assert params["trt_profile_opt_shapes"] == "input:8x3x256x256"
    assert params["trt_profile_max_shapes"] == "input:8x3x1024x1024"


@pytest.mark.slow
def test_running_mode_dynamic_size_and_opset(tmp_path):
    ckpt = make_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    out = tmp_path / "running.onnx"
    result = run_cli([ckpt, "-o", tmp_path / "running", "--norm-mode", "running",
                      "--dynamic-size", "--opset", "18"])  # .onnx appended
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "running.onnx"]
    assert "generated smooth images" in result.output  # no val data recorded
    assert "dynamic size 128x64" in result.output
    model = onnx.load(str(out))
    assert model.opset_import[0].version == 18
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"BatchNormalization", "InstanceNormalization", "Dropout"}  # all folded
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and isinstance(dims[2], str) and isinstance(dims[3], str)
    engine = Engine(out, provider="cpu")
    assert engine.metadata.dynamic_size and engine.metadata.norm_mode == "running"
    net = load(ckpt).generator.eval()
    for h, w in ((SIZE, SIZE), (2 * SIZE, SIZE), (SIZE, 3 * SIZE)):
        x = images(3, h, w)
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        assert ref.std() > 0.1
        assert np.abs(engine.run(x) - ref).max() <= 1e-4
    # running stats really differ from per-image statistics on these inputs
    assert np.abs(engine.run(images(2)) - train_mode_per_image(net, images(2))).max() > 1e-2


# --- bad input -------------------------------------------------------------------------

class RunsCode:
    def __reduce__(self):
        return (os.makedirs, (str(Path(os.environ["P2P_TEST_PWNED"])),))


def bad_files(tmp_path: Path) -> dict:
    good = make_checkpoint(tmp_path / "good.pt", size=32)
    data = good.read_bytes()
    files = {"zero-byte": b"", "truncated": data[: len(data) // 2],
             "random": np.random.default_rng(0).bytes(4096)}
    for name, blob in files.items():
        (tmp_path / f"{name}.pt").write_bytes(blob)
    torch.save({"conv.weight": torch.zeros(3), "epoch": 3}, tmp_path / "unrelated.pt")
    torch.save({"model.model.0.weight": RunsCode()}, tmp_path / "code.pt")
    torch.save({"format": "p2p-checkpoint", "model": {}}, tmp_path / "incomplete.pt")
    return {p.stem: p for p in tmp_path.glob("*.pt") if p.stem != "good"}


def test_bad_checkpoints_give_one_line_and_no_file(tmp_path, monkeypatch):
    pwned = tmp_path / "pwned"
    monkeypatch.setenv("P2P_TEST_PWNED", str(pwned))
    files = bad_files(tmp_path)
    expect = {"zero-byte": "empty file", "truncated": "not a readable", "random": "not a readable",
              "unrelated": "neither a p2p checkpoint", "code": "refused",
              "incomplete": "lacks"}
    assert set(files) == set(expect)
    for name, path in files.items():
        out = tmp_path / f"{name}.onnx"
        result = run_cli([path, "-o", out])
        assert result.exit_code == 1, name
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and str(path) in lines[0], name
        assert expect[name] in lines[0], (name, lines[0])
        assert not out.exists()
    assert not pwned.exists()  # the pickle's code never ran


def test_console_script_exit_code(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    exe = Path(sys.executable).with_name("p2p-export")
    proc = subprocess.run([exe, tmp_path / "empty.pt"], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"Error: {tmp_path / 'empty.pt'}: empty file "
                                                "(an interrupted copy?)"]


def test_contradicting_flag_and_missing_runs(tmp_path):
    ckpt = make_checkpoint(tmp_path / "r" / "checkpoints" / "latest.pt", size=32)
    result = run_cli([ckpt, "--direction", "AtoB"])
    assert result.exit_code == 1 and "--direction AtoB contradicts" in result.output
    result = run_cli(["--runs-dir", tmp_path / "nowhere"])
    assert result.exit_code == 1 and "no run with checkpoints/latest.pt" in result.output


def test_newest_run_is_the_default(tmp_path):
    old = make_checkpoint(tmp_path / "runs" / "a" / "checkpoints" / "latest.pt", size=32)
    new = make_checkpoint(tmp_path / "runs" / "b" / "checkpoints" / "latest.pt", size=32)
    os.utime(old, (1e9, 1e9))
    assert resolve(None, tmp_path / "runs") == new
    assert resolve(tmp_path / "runs" / "a") == old


# --- failures leave nothing behind ---------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("how", ["tolerance", "interrupt"])
def test_failed_or_interrupted_export_leaves_nothing(tmp_path, monkeypatch, how):
    ckpt = make_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt", size=32)
    out = tmp_path / "out" / "g.onnx"
    if how == "tolerance":  # an impossible bound: the FP32 check must fail
        monkeypatch.setattr(verify, "FP32_MAX_ABS", -1.0)
        exc = export_onnx.ExportError
    else:
        def interrupted(*a, **k):
            raise KeyboardInterrupt
        monkeypatch.setattr(verify, "verify", interrupted)
        exc = KeyboardInterrupt
    cfg = export_onnx.ExportConfig(source=ckpt, output=out, fp16=True,
                                   triton=tmp_path / "triton")
    with pytest.raises(exc) as e:
        export_onnx.main(cfg)
    if how == "tolerance":  # issue 22: the FP16 file passed its own checks and is written
        assert str(e.value).startswith("not written: g.onnx: verification failed: batch 1 "
                                       "max abs error") and "(wrote g.fp16.onnx)" in str(e.value)
        assert sorted(p.name for p in out.parent.iterdir()) == ["g.fp16.onnx"]  # no temps
        assert read_metadata(out.with_name("g.fp16.onnx")).verified
        return
    assert not out.parent.exists()  # no model, no fp16 model, no temp file, no new folder
    assert not (tmp_path / "triton").exists()


@pytest.mark.parametrize("conv_first", [True, False])
def test_fp16_refuses_an_initializer_shared_by_fp16_and_fp32_ops_in_either_order(conv_first):
    """Issue 14: the guard fired only when the FP16 op came first. Initializer "s" is the
    FP16 Conv's bias and the FP32 InstanceNormalization's scale."""
    from onnx import TensorProto, helper, numpy_helper

    from p2p.export.fp16 import to_fp16
    from p2p.runtime.errors import ExportError

    inits = [numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w"),
             numpy_helper.from_array(np.ones(3, np.float32), "s"),
             numpy_helper.from_array(np.zeros(3, np.float32), "b")]
    if conv_first:
        nodes = [helper.make_node("Conv", ["x", "w", "s"], ["h"]),
                 helper.make_node("InstanceNormalization", ["h", "s", "b"], ["y"])]
    else:
        nodes = [helper.make_node("InstanceNormalization", ["x", "s", "b"], ["h"]),
                 helper.make_node("Conv", ["h", "w", "s"], ["y"])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 4, 4]) for n in "xy"]
    graph = helper.make_graph(nodes, "g", io[:1], io[1:], inits)
    with pytest.raises(ExportError, match="initializer s is shared by FP16 and FP32 ops"):
        to_fp16(helper.make_model(graph))


def test_an_fp32_only_reexport_names_older_siblings_and_clears_dead_temps(tmp_path):
    """After --fp16 at one step, an FP32-only export of a later checkpoint leaves the FP16
    file of the earlier one: the export says so (p2p-translate passes it over), and a
    killed export's temps of *any* file of the folder (here the FP16 one) are removed."""
    ckpt = make_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt", size=32, step=40)
    out = tmp_path / "out" / "g.onnx"
    assert run_cli([ckpt, "-o", out, "--fp16"]).exit_code == 0
    dead = out.with_name(".g.fp16.onnx.999999999.abcd1234.tmp.onnx")  # a pid that is gone
    dead.write_bytes(b"half a model")
    make_checkpoint(ckpt, size=32, step=120)  # trained on: new weights
    r = run_cli([ckpt, "-o", out])
    assert r.exit_code == 0, r.output
    assert ("note: g.fp16.onnx (step 40) beside it was exported from another checkpoint: "
            "p2p-translate passes it over") in r.output
    assert not dead.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["g.fp16.onnx", "g.onnx"]


@pytest.mark.parametrize("edit, says", [
    (lambda d: d["model"].update(ngf="8"), "bad model config in checkpoint: ngf '8' is not a "
                                           "positive integer"),
    (lambda d: d.update(step="forty"), "checkpoint step 'forty' is not a whole number >= 0"),
    (lambda d: d.update(model=[1]), "checkpoint 'model' is not a dict"),
])
def test_checkpoint_values_of_the_wrong_type_are_one_line(tmp_path, edit, says):
    ckpt = make_checkpoint(tmp_path / "c.pt", size=32)
    state = torch.load(ckpt, weights_only=True)
    edit(state)
    torch.save(state, ckpt)
    r = run_cli([ckpt, "-o", tmp_path / "g.onnx"])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and says in lines[0], r.output
    assert not (tmp_path / "g.onnx").exists()
