"""Files from strangers: checkpoints that would run code, ONNX models that would read files
outside their folder, names and links that would write outside --output (decompression
bombs: tests/test_image_limits.py).

Each refusal is checked where it matters: the pickle's code did not run (its marker file is
absent), onnxruntime never saw the model, nothing was written outside the output folder.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from badfiles import noise
from onnx_models import identity_model
from p2p.runtime import modelfile
from p2p.runtime.engine import Engine
from p2p.runtime.errors import CheckpointError
from p2p.runtime.modelfile import read_metadata_props
from p2p.runtime.errors import ModelError

BIN = Path(sys.executable).parent
TINY = ["--image-size", "32", "--load-size", "36", "--ngf", "4", "--ndf", "4", "--threads", "1",
        "--workers", "0", "--quiet", "--sample-every", "0", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("P2P_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("P2P_MAX_IMAGE_PIXELS", raising=False)
    n = torch.get_num_threads()  # p2p-train --threads is process-wide
    yield
    torch.set_num_threads(n)


def invoke(main, *args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


# --- checkpoints that would run code ---------------------------------------------------------

class RunsCode:
    """Unpickling this calls os.system: what a malicious .pt/.pth does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_checkpoint(path: Path, marker: Path, legacy: bool) -> Path:
    """A file shaped like a p2p checkpoint whose generator is a code-running object; saved in
    torch's zip format, or as a bare (pre-1.6 style) pickle."""
    state = {"format": "p2p-checkpoint", "format_version": 1, "step": 1, "epoch": 0,
             "model": {"image_size": 32, "ngf": 4, "ndf": 4}, "task": {},
             "generator": RunsCode(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if legacy:
        with open(path, "wb") as f:
            pickle.dump(state, f, protocol=2)
    else:
        torch.save(state, path)
    # The file really is dangerous: an unsafe load runs it (checked once, then cleaned up).
    return path


def test_the_evil_checkpoint_really_runs_code_when_loaded_unsafely(tmp_path):
    marker = tmp_path / "pwned"
    path = evil_checkpoint(tmp_path / "x.pt", marker, legacy=False)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_export_refuses_code_in_a_checkpoint(tmp_path, legacy):
    from p2p.cli.export import main

    marker = tmp_path / "pwned"
    ckpt = evil_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt", marker, legacy)
    out = tmp_path / "g.onnx"
    r = invoke(main, ckpt, "-o", out)
    assert r.exit_code == 1
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and str(ckpt) in errors[0]
    assert "refused: the file holds Python objects that could run code" in errors[0]
    assert not marker.exists() and not out.exists()


@pytest.fixture
def trained_run(tmp_path):
    """A real tiny run (one step) to resume: its config.json and checkpoint."""
    from p2p.cli.train import main

    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.fromarray(noise(64, 32, i)).save(data / f"{i}.png")
    run = tmp_path / "run"
    r = invoke(main, "--data", data, *TINY, "--max-steps", 1, "-o", run)
    assert r.exit_code == 0, r.output
    return run


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_train_resume_refuses_code_in_a_checkpoint(trained_run, tmp_path, legacy):
    from p2p.cli.train import main

    marker = tmp_path / "pwned"
    latest = trained_run / "checkpoints" / "latest.pt"
    evil_checkpoint(latest, marker, legacy)
    config = (trained_run / "config.json").read_text()
    r = invoke(main, "--resume", "-o", trained_run, "--max-steps", 3)
    assert r.exit_code == 1
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and str(latest) in errors[0] and "refused" in errors[0]
    assert not marker.exists()
    assert (trained_run / "config.json").read_text() == config  # the run is left as it was


def test_train_resume_refuses_a_torn_checkpoint(trained_run):
    from p2p.cli.train import main

    latest = trained_run / "checkpoints" / "latest.pt"
    raw = latest.read_bytes()
    latest.write_bytes(raw[: len(raw) // 2])
    r = invoke(main, "--resume", "-o", trained_run, "--max-steps", 3)
    assert r.exit_code == 1
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert errors == [f"Error: {latest}: not a readable PyTorch checkpoint (truncated or "
                      f"corrupt?): {errors[0].split('corrupt?): ', 1)[-1]}"]


# --- ONNX models that would read files outside their folder ----------------------------------

def test_protobuf_field_numbers_match_onnx():
    """The metadata reader walks the wire format by field number. Derive, from onnx's own
    descriptors, every path from a ModelProto to a TensorProto, and check that the reader's
    table has each one: a typo or a new onnx field cannot hide an external-data reference."""
    kinds = {"ModelProto": "model", "TrainingInfoProto": "training", "GraphProto": "graph",
             "FunctionProto": "function", "NodeProto": "node", "AttributeProto": "attribute",
             "SparseTensorProto": "sparse", "TensorProto": "tensor"}
    seen = {}

    def collect(d):
        if d.name not in seen:
            seen[d.name] = d
            for f in d.fields:
                if f.message_type is not None:
                    collect(f.message_type)

    collect(onnx.ModelProto.DESCRIPTOR)
    reach = {"TensorProto"}  # message types from which a TensorProto can be reached
    while True:
        more = {n for n, d in seen.items() if n not in reach and any(
            f.message_type is not None and f.message_type.name in reach for f in d.fields)}
        if not more:
            break
        reach |= more
    table = modelfile._TENSOR_PATHS
    assert {kinds[n] for n in reach} == set(table)
    for name in reach:
        want = {f.number: kinds[f.message_type.name] for f in seen[name].fields
                if f.message_type is not None and f.message_type.name in reach}
        have = {k: v for k, v in table[kinds[name]].items() if v != "entry"}
        assert have == want, name
    assert table["tensor"] == {onnx.TensorProto.DESCRIPTOR.fields_by_name[
        "external_data"].number: "entry"}
    assert onnx.ModelProto.DESCRIPTOR.fields_by_name["metadata_props"].number == 14


@pytest.fixture
def external_model(tmp_path):
    """An identity model whose weight lives in weights.bin beside it (legitimately)."""
    folder = tmp_path / "models"
    folder.mkdir()
    path = identity_model(folder / "m.onnx", dynamic_size=True, size_multiple=8)
    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    assert (folder / "weights.bin").is_file()
    return path


def relocate(model_path: Path, location: str, dest: Path) -> Path:
    model = onnx.load(str(model_path), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save_model(model, str(dest))
    return dest


def test_external_data_inside_the_folder_runs(external_model):
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    with Engine(external_model, "cpu") as e:
        np.testing.assert_allclose(e.run(x), x, atol=1e-6)


def _never_onnxruntime(monkeypatch):
    import onnxruntime

    def forbidden(*a, **k):
        raise AssertionError("onnxruntime was handed a model that should have been refused")

    monkeypatch.setattr(onnxruntime, "InferenceSession", forbidden)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink-out", "dotdot-in-subdir"])
def test_external_data_leaving_the_folder_is_refused_before_onnxruntime(
        external_model, tmp_path, monkeypatch, how):
    from p2p.cli.translate import main

    folder = external_model.parent
    secret = tmp_path / "secret.bin"
    shutil.copyfile(folder / "weights.bin", secret)  # readable, and the right size: only the
    (folder / "weights.bin").unlink()                 # path check can stop it
    if how == "dotdot":
        location = "../secret.bin"
    elif how == "absolute":
        location = str(secret)
    elif how == "symlink-out":
        (folder / "link.bin").symlink_to(secret)
        location = "link.bin"
    else:
        (folder / "sub").mkdir()
        location = "sub/../../secret.bin"
    bad = relocate(external_model, location, folder / "bad.onnx")
    with pytest.raises(ModelError, match=r"refused: its external data .* lies outside the "
                                         r"model's folder"):
        read_metadata_props(bad)
    _never_onnxruntime(monkeypatch)
    Image.fromarray(noise(16, 16)).save(tmp_path / "a.png")
    r = invoke(main, tmp_path / "a.png", "--model", bad, "-o", tmp_path / "out", "-q")
    assert r.exit_code == 1
    assert f"Error: {bad}: refused: its external data {location!r} lies outside" in r.output
    assert not (tmp_path / "out").exists()


def test_external_data_is_found_in_nested_messages(tmp_path):
    """A Constant node's tensor, a subgraph's initializer, a sparse initializer: each can name
    an external file, and each is checked."""
    def external(name: str, location: str) -> TensorProto:
        t = numpy_helper.from_array(np.zeros(4, np.float32), name)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", location
        return t

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [4])

    def model(graph_nodes, inits=(), sparse=()):
        g = helper.make_graph(graph_nodes, "g", [x], [y], list(inits))
        g.sparse_initializer.extend(sparse)
        return helper.make_model(g)

    const = helper.make_node("Constant", [], ["c"], value=external("c", "/etc/passwd"))
    sub = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "sub", [], [y],
                            [external("w", "../../w.bin")])
    branch = helper.make_node("If", ["cond"], ["output"], then_branch=sub, else_branch=sub)
    sparse = helper.make_sparse_tensor(external("v", "../v.bin"),
                                       numpy_helper.from_array(np.zeros(1, np.int64), "i"), [4])
    cases = {"constant": model([const]), "subgraph": model([branch]),
             "sparse": model([], sparse=[sparse]),
             "inside": model([helper.make_node("Constant", [], ["c"],
                                               value=external("c", "ok.bin"))])}
    for name, m in cases.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(m.SerializeToString())
        if name == "inside":
            assert read_metadata_props(path) == {}
        else:
            with pytest.raises(ModelError, match="lies outside the model's folder"):
                read_metadata_props(path)


def test_deeply_nested_model_is_an_error_not_a_crash(tmp_path):
    """Graph -> node -> attribute -> graph ... 500 times (hand-encoded: protobuf itself refuses
    to build it). Walking it naively would overflow Python's stack."""
    def field(number: int, payload: bytes) -> bytes:
        def varint(n: int) -> bytes:
            out = b""
            while True:
                out += bytes([n & 0x7F | (0x80 if n > 0x7F else 0)])
                n >>= 7
                if not n:
                    return out
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    graph = b""
    for _ in range(500):  # GraphProto.node -> NodeProto.attribute -> AttributeProto.g
        graph = field(1, field(5, field(6, graph)))
    path = tmp_path / "deep.onnx"
    path.write_bytes(field(7, graph))  # ModelProto.graph
    with pytest.raises(ModelError, match="not an ONNX model"):
        read_metadata_props(path)


# --- outputs stay inside --output ---------------------------------------------------------------

def test_translate_outputs_never_escape_output(tmp_path, monkeypatch):
    from p2p.cli.translate import main

    model = identity_model(tmp_path / "m.onnx", dynamic_size=True, size_multiple=8)
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(noise(16, 16, 1)).save(outside / "secret.png")
    src = tmp_path / "deep" / "er" / "in"
    src.mkdir(parents=True)
    Image.fromarray(noise(16, 16, 2)).save(tmp_path / "x.png")
    (src / "evil.png").symlink_to(outside / "secret.png")  # a file link pointing outside
    (src / "elsewhere").symlink_to(outside, target_is_directory=True)  # a folder link
    out = tmp_path / "out"
    monkeypatch.chdir(src)
    r = invoke(main, ".", "../../../x.png", "--model", model, "-o", out, "-q")
    assert r.exit_code == 0, r.output
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    # The link's target is read (the user gave the folder) but written as out/in/evil.png;
    # the folder link is not followed; "../../../x.png" becomes out/x.png.
    assert written == ["in/evil.png", "x.png"]
    assert sorted(p.name for p in outside.iterdir()) == ["secret.png"]


def test_process_outputs_never_escape_output(tmp_path):
    from p2p.cli.process import main

    outside = tmp_path / "outside"
    outside.mkdir()
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(noise(16, 16)).save(src / "sub" / "a.png")
    Image.fromarray(noise(16, 16, 1)).save(src / "b.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(outside, target_is_directory=True)  # planted link in the output
    r = invoke(main, "grayscale", "--input", src, "--output", out, "--quiet")
    assert r.exit_code == 1
    assert "1 written" in r.output and "1 failed" in r.output
    assert f"failed: {src / 'sub' / 'a.png'}: output {out / 'sub' / 'a.png'} escapes the " \
           "output folder" in r.output
    assert list(outside.iterdir()) == [] and (out / "b.png").is_file()


@pytest.mark.parametrize("raw", [b"hello world", b"\x80\x02}q\x00(X\x01", b"\x80\x02K\x05.",
                                 bytes(range(256)) * 8],
                         ids=["text (KeyError)", "cut pickle (struct.error)", "bad magic",
                              "random"])
def test_any_garbage_checkpoint_is_one_line_in_every_loader(tmp_path, raw):
    from p2p.cli.export import main as export_cli
    from p2p.cli.pretrained import main as pretrained_cli
    from p2p.trainer.checkpoint import load_state

    bad = tmp_path / "g.pth"
    bad.write_bytes(raw)
    with pytest.raises(CheckpointError, match=r"g\.pth: not a readable PyTorch checkpoint"):
        load_state(bad)
    r = invoke(export_cli, bad, "-o", tmp_path / "out")
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1].startswith(
        f"Error: {bad}: not a readable PyTorch checkpoint"), r.output
    assert not (tmp_path / "out").exists()
    # p2p-pretrained import: the bad file is refused and not left in the model cache
    cache = tmp_path / "cache"
    r = CliRunner(env={"P2P_CACHE": str(cache)}).invoke(
        pretrained_cli, ["import", str(bad), "--name", "mine", "--direction", "AtoB", "-q"])
    assert r.exit_code == 1 and "not a readable PyTorch checkpoint" in r.output, r.output
    assert not (cache / "models" / "mine").exists()
