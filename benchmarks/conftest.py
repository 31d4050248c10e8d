"""Benchmark fixtures: the default U-Net-256 (ngf 64) exported once, real facades inputs,
the machine's facts and measured peak (helpers and cases live in benchlib.py).

Run (see BENCHMARKS.md):  pytest benchmarks/ --benchmark-only --benchmark-json=bench.json
                          python benchmarks/report.py bench.json
Environment: P2P_BENCH_MODEL=<exported .onnx> benchmarks that model instead of a freshly
exported random-weight generator (speed does not depend on the weights; the bf16 PSNR does);
P2P_BENCH_NORM=running exports with BatchNorm folded instead of per-image normalisation.
The INT8 cases run <model>.int8.onnx beside it: written here with p2p-export --int8
(calibrated on 48 facades train label maps), or the one beside P2P_BENCH_MODEL.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchlib import (BATCH_SIZES, FACADES, GFLOP_PER_IMAGE, _version, cpu_flags, cpu_model,
                      export_random_unet, matrix_peak, measured_peak)
from p2p.runtime.host import physical_cores
from p2p.runtime.images import crop_half, open_rgb


@pytest.fixture(scope="session")
def machine(tmp_path_factory) -> dict:
    cores = physical_cores()
    flags = cpu_flags()
    gflops = measured_peak(tmp_path_factory.mktemp("peak"), cores)
    # The AMX-aware roofline: the matrix units through oneDNN (torch), BF16 and INT8.
    gflops.update(matrix_peak(cores))
    return {
        "cpu": cpu_model(),
        "physical_cores": cores,
        "logical_cpus": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_bf16" in flags,
        "flags": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni"))),
        "peak_gflops": gflops,
        "peak_images_per_s": {k: round(v / GFLOP_PER_IMAGE, 2) for k, v in gflops.items()},
        "versions": {"python": platform.python_version(), "p2p": _version("p2p"),
                     "numpy": np.__version__, "onnxruntime": _version("onnxruntime")
                     if _version("onnxruntime") != "-" else _version("onnxruntime-gpu"),
                     "openvino": _version("openvino"), "torch": _version("torch")},
    }


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Engine caches (onnxruntime's optimised graph, TensorRT engines) go to a temp folder:
    runs are reproducible and the user's cache is left alone."""
    old = os.environ.get("P2P_CACHE")
    os.environ["P2P_CACHE"] = str(tmp_path_factory.mktemp("p2p-cache"))
    yield
    if old is None:
        os.environ.pop("P2P_CACHE", None)
    else:
        os.environ["P2P_CACHE"] = old


@pytest.fixture(scope="session")
def facades_val() -> Path:
    if not (FACADES / "val").is_dir():
        pytest.fail(f"facades dataset not found at {FACADES}; set P2P_DATA to the folder "
                    "that holds facades/ (or P2P_FACADES to facades/ itself)")
    return FACADES / "val"


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> Path:
    """The default generator (U-Net-256, ngf 64, batch norm) through p2p-export's own code."""
    if os.environ.get("P2P_BENCH_MODEL"):
        return Path(os.environ["P2P_BENCH_MODEL"])
    pytest.importorskip("torch", reason="exporting the benchmark model needs torch")
    from p2p.export.load import Overrides
    from p2p.runtime.errors import ExportError

    folder = tmp_path_factory.mktemp("model")
    cfg = dict(norm_mode=os.environ.get("P2P_BENCH_NORM", "per-image"),
               overrides=Overrides(direction="BtoA"), int8=True,
               calibration=FACADES / "train", calibration_images=48)
    try:  # verified, so that `p2p-translate --model <folder>` may pick the INT8 file
        return export_random_unet(folder, **cfg)
    except ExportError as e:  # INT8 below 40 dB on these weights: the INT8 cases skip
        print(f"benchmark model: {e}; exporting FP32 only")
        return export_random_unet(folder, **{**cfg, "int8": False})


@pytest.fixture(scope="session")
def int8_model_path(model_path) -> Path:
    path = model_path.with_name(model_path.stem + ".int8" + model_path.suffix)
    if not path.is_file():
        pytest.skip(f"no INT8 export beside {model_path} (p2p-export --int8)")
    return path


@pytest.fixture(scope="session")
def images(facades_val) -> np.ndarray:
    """16 real inputs: the label (right) halves of facades val images, NCHW float32 in [-1, 1]."""
    batch = []
    for path in sorted(facades_val.glob("*.jpg"), key=lambda p: int(p.stem))[:max(BATCH_SIZES)]:
        im = open_rgb(path)  # the decoder of every command
        half = crop_half(im, "right").resize((256, 256), Image.BICUBIC)
        batch.append(np.asarray(half, np.float32).transpose(2, 0, 1) / 127.5 - 1.0)
    return np.stack(batch)


@pytest.fixture(scope="session")
def fp32_reference(model_path, images) -> np.ndarray:
    """onnxruntime CPU FP32 output for ``images``: what reduced precision is compared with."""
    from p2p.runtime.engine import Engine

    with Engine(model_path, "cpu", batch_size=len(images)) as engine:
        return engine.run(images)


