"""The real onnxruntime-gpu wheel on a machine without a CUDA device (issue 15).

Optional: it needs a throwaway virtual environment holding ``onnxruntime-gpu`` and p2p's
runtime dependencies (not this project's venv: ``onnxruntime`` and ``onnxruntime-gpu`` install
the same module), made once with

    python3 -m venv /tmp/ortgpu
    /tmp/ortgpu/bin/pip install onnxruntime-gpu numpy pillow click tqdm

(``P2P_ORTGPU_VENV`` points elsewhere). p2p itself is not installed there: the test puts this
checkout on its path. Skipped, saying so, when that venv is absent or this machine has a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from onnx_models import conv_model
from p2p.runtime import host

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("P2P_ORTGPU_VENV", "/tmp/ortgpu"))
PYTHON = VENV / "bin" / "python"
NOISE = ("onnxruntime:", "EP Error", "Failed to load", "Falling back", "preload")

pytestmark = [
    pytest.mark.skipif(not PYTHON.is_file(), reason=f"no onnxruntime-gpu venv at {VENV} "
                       "(optional; see this file's docstring to make one)"),
    pytest.mark.skipif(host.cuda_devices()[0] > 0,
                       reason="this machine has a CUDA device: the check is for one without"),
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """(path entry that imports this checkout as p2p, the wheel's CUDA major)."""
    root = tmp_path_factory.mktemp("p2p-path")
    (root / "p2p").mkdir()
    for sub in ("runtime", "cli"):  # the namespace package, as pyproject's package-dir maps it
        (root / "p2p" / sub).symlink_to(REPO / sub)
    r = subprocess.run([str(PYTHON), "-c", "import onnxruntime as o; from onnxruntime.capi "
                        "import build_and_package_info as b; print(o.get_available_providers(),"
                        " b.cuda_version)"], capture_output=True, text=True, timeout=120)
    if r.returncode or "CUDAExecutionProvider" not in r.stdout:
        pytest.skip(f"{PYTHON} has no onnxruntime-gpu: {(r.stdout + r.stderr)[-300:]}")
    return root, int(r.stdout.split()[-1].split(".")[0])


def translate(wheel, tmp_path, provider):
    model = conv_model(tmp_path / "m.onnx")
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "a.png")
    env = dict(os.environ, PYTHONPATH=str(wheel[0]), P2P_CACHE=str(tmp_path / "cache"))
    return subprocess.run(
        [str(PYTHON), "-c", "from p2p.cli.translate import main; main()", str(tmp_path / "a.png"),
         "--model", str(model), "-o", str(tmp_path / "out"), "--provider", provider],
        capture_output=True, text=True, env=env, timeout=300)


def test_auto_prints_nothing_from_onnxruntime_and_takes_the_cpu(wheel, tmp_path):
    r = translate(wheel, tmp_path, "auto")
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert not [line for line in out.splitlines() if any(n in line for n in NOISE)], out
    skipped = [line for line in out.splitlines() if line.startswith("auto:")]
    assert len(skipped) == 1, out
    why = host.cuda_devices()[1]
    assert skipped[0] == f"auto: skipped tensorrt, cuda: no CUDA device here: {why}"
    assert (tmp_path / "out" / "a.png").is_file()
    assert not (tmp_path / "cache" / "tensorrt").exists()


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_request_fails_with_onnxruntimes_reason_and_the_wheels_cuda_major(
        wheel, tmp_path, provider):
    r = translate(wheel, tmp_path, provider)
    assert r.returncode == 1
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: provider {provider}: "), lines
    major = wheel[1]
    assert f"is a CUDA {major} build" in lines[0]
    assert "cannot open shared object file" in lines[0]  # onnxruntime's own words
    if provider == "tensorrt":
        assert f"tensorrt-cu{major}>=10,<11" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "tensorrt").exists()
