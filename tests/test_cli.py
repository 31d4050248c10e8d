"""What every command shares: -h and --quiet, one line for a missing optional dependency
(issue 14 fault 8: a deployment install without torch, openvino, the serve or process
extras), and the Python version p2p-serve needs."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from blocking import cli_without, run_without
from onnx_models import identity_model

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["train", "export", "translate", "process", "eval", "serve"]
PROCESS_OPS = ["resize", "combine", "split", "grayscale", "edges", "blank"]
PRETRAINED_OPS = ["list", "get", "import"]


def command(name):
    return __import__(f"p2p.cli.{name}", fromlist=["main"]).main


@pytest.mark.parametrize("args", [[c] for c in COMMANDS] + [["process", op] for op in PROCESS_OPS]
                         + [["pretrained"]] + [["pretrained", op] for op in PRETRAINED_OPS])
def test_every_command_takes_h_and_quiet(args):
    for flag in ("-h", "--help"):
        r = CliRunner().invoke(command(args[0]), [*args[1:], flag])
        assert r.exit_code == 0 and "Usage:" in r.output, (args, flag, r.output)
    if args not in (["process"], ["pretrained"]):  # a group itself only lists its operations
        r = CliRunner().invoke(command(args[0]), [*args[1:], "-h"])
        assert re.search(r"-q, --quiet\b", r.output), (args, r.output)


def test_the_blocker_really_blocks():
    r = run_without(["numpy"], "import numpy")
    assert r.returncode == 1 and "No module named 'numpy' (blocked by the test)" in r.stderr


@pytest.mark.parametrize("prog, module, args", [
    ("p2p-train", "train", ["--data", "x", "-h"]),
    ("p2p-export", "export", ["-h"]),
])
def test_train_and_export_without_torch_name_the_extra(prog, module, args):
    r = cli_without(["torch"], module, prog, *args)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == (f"Error: {prog} needs torch, which is not installed: "
                                "pip install 'p2p[train]'")
    assert r.stdout == ""


def test_pretrained_list_quiet_gives_the_names_only(tmp_path, monkeypatch):
    monkeypatch.setenv("P2P_CACHE", str(tmp_path))  # no imported models beside the list
    r = CliRunner().invoke(command("pretrained"), ["list", "-q"])
    assert r.exit_code == 0, r.output
    assert r.output.split() == ["facades_label2photo", "sat2map", "map2sat", "edges2shoes",
                                "day2night"]


@pytest.mark.parametrize("args", [["get", "sat2map"], ["import", __file__, "--name", "x"]])
def test_pretrained_export_without_torch_names_the_extra(args):
    r = cli_without(["torch"], "pretrained", "p2p-pretrained", *args)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == (f"Error: p2p-pretrained {args[0]} needs torch, which is not "
                                "installed: pip install 'p2p[train]'")
    r = cli_without(["torch"], "pretrained", "p2p-pretrained", "list", "-q")
    assert r.returncode == 0 and "sat2map" in r.stdout.split(), r.stderr


def test_export_without_onnx_names_the_extra():
    r = cli_without(["onnx"], "export", "p2p-export", "-h")
    assert r.returncode == 1
    assert r.stderr.strip().endswith("needs onnx, which is not installed: pip install 'p2p[train]'")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-model")
    Image.new("RGB", (32, 32), (1, 2, 3)).save(d / "a.png")
    return identity_model(d / "m.onnx", dynamic_size=True), d / "a.png"


@pytest.mark.parametrize("blocked, args, extra", [
    ("openvino", ["--provider", "openvino"], "openvino"),
    ("onnxruntime", ["--provider", "cpu"], "cpu"),
])
def test_translate_without_a_backend_names_the_extra(model, tmp_path, blocked, args, extra):
    path, image = model
    r = cli_without([blocked], "translate", "p2p-translate", image, "--model", path,
                    "-o", tmp_path / "out", "-q", *args)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install 'p2p[{extra}]'" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_serve_without_the_serve_extra_names_it(model):
    r = cli_without(["starlette", "uvicorn"], "serve", "p2p-serve", "--model", model[0])
    assert r.returncode == 1
    assert r.stderr.strip() == ("Error: p2p-serve needs starlette, which is not installed: "
                                "pip install 'p2p[serve]'")


def test_process_edges_without_opencv_names_the_extra(model, tmp_path):
    r = cli_without(["cv2"], "process", "p2p-process", "edges", "--input", model[1].parent,
                    "--output", tmp_path / "e", "-q")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == \
        "Error: edges needs OpenCV: pip install 'p2p[process]' (opencv-python-headless)"


def test_eval_and_process_run_without_torch_onnxruntime_or_opencv(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (16, 16), (200, 100, 0)).save(src / "a.png")
    blocked = ["torch", "onnxruntime", "cv2", "openvino"]
    r = cli_without(blocked, "process", "p2p-process", "grayscale", "--input", src,
                    "--output", tmp_path / "g", "-q")
    assert r.returncode == 0, r.stderr
    shutil.copytree(src, tmp_path / "targets")  # one folder as both is refused
    r = cli_without(blocked, "eval", "p2p-eval", src, tmp_path / "targets", "-q")
    assert r.returncode == 0 and "1 images  L1 0.0000" in r.stdout, r.stderr


def test_requires_python_covers_what_p2p_serve_uses():
    """asyncio.timeout (runtime/server.py) is new in Python 3.11."""
    text = (ROOT / "pyproject.toml").read_text()
    floor = tuple(int(x) for x in re.search(r'requires-python = ">=(\d+)\.(\d+)"', text).groups())
    assert "asyncio.timeout(" in (ROOT / "runtime" / "server.py").read_text()
    assert floor >= (3, 11)
    assert sys.version_info >= floor


def test_model_name_is_found_when_a_folder_of_that_name_is_in_the_way(model, tmp_path,
                                                                      monkeypatch):
    # `p2p-pretrained import FILE --name facades`, then run inside the folder that holds the
    # facades dataset: --model facades is the model, not the dataset folder.
    monkeypatch.setenv("P2P_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "models" / "facades" / "generator.onnx"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(model[0].read_bytes())
    (tmp_path / "facades").mkdir()
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(command("translate"), [str(model[1]), "--model", "facades",
                                                  "-o", "out", "-q"])
    assert r.exit_code == 0, r.output
    assert f"--model facades (downloaded pretrained model): model: generator.onnx (fp32) " \
        f"from {cached.parent}" in r.output
    assert (tmp_path / "out" / "a.png").is_file()
    # A folder that is no model name and holds no export: one line saying so, nothing written.
    (tmp_path / "runs").mkdir()
    r = CliRunner().invoke(command("translate"), [str(model[1]), "--model", "runs",
                                                  "-o", "out2", "-q"])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1].startswith(
        "Error: runs: no p2p model (*.onnx with p2p metadata) in runs"), r.output
    assert not (tmp_path / "out2").exists()
