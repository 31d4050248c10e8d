"""What the benchmark files share: the cases, machine facts, the measured peak, and the
helpers that put images/s and the facts into pytest-benchmark's extra_info."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pytest

from p2p.runtime import metrics
from p2p.runtime.errors import ProviderError
from p2p.runtime.precision import REGISTRY

REPO = Path(__file__).resolve().parents[1]
# The README's rule: $P2P_FACADES, else facades/ in $P2P_DATA (the folder `make` and
# p2p-train read datasets from), else ../shared/datasets/facades beside the checkout.
FACADES = Path(os.environ.get("P2P_FACADES") or (
    Path(os.environ["P2P_DATA"]) / "facades" if os.environ.get("P2P_DATA")
    else REPO.parent / "shared" / "datasets" / "facades"))
BATCH_SIZES = (1, 8, 16)
E2E_IMAGES = 64
GFLOP_PER_IMAGE = 12.1  # 6.05 GMAC for one 256x256 image through U-Net-256, ngf 64
# (provider, precision) for the CPU; bf16 and int8 are the reduced-precision CPU paths (int8
# runs the generator.int8.onnx written beside the benchmark model by p2p-export --int8).
CPU_CASES = (("cpu", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"))
MIN_PSNR = {n: p.min_psnr_db for n, p in REGISTRY.items() if p.min_psnr_db}  # vs FP32, dB
E2E_AUTO_IMAGES = 400  # issue 11: p2p-translate (auto) on the 100 val images, each 4 times


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "-"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def measured_peak(tmp: Path, threads: int) -> dict[str, float]:
    """GFLOP/s of FP32 FMA and BF16 dot products on this machine (benchmarks/peak.c), or {}
    when there is no C compiler or no AVX-512 (the report then falls back to the issue's)."""
    exe = tmp / "peak"
    try:
        subprocess.run(["cc", "-O2", "-mavx512f", "-mavx512bf16", "-mavx512vnni", "-pthread",
                        str(REPO / "benchmarks" / "peak.c"), "-o", str(exe)],
                       check=True, capture_output=True, timeout=60)
        out = subprocess.run([str(exe), str(threads)], check=True, capture_output=True,
                             text=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    peak = {k: float(v) for k, v in re.findall(r"^(fp32|bf16|int8) ([\d.]+)$", out, re.M)}
    if "avx512_bf16" not in cpu_flags():
        peak.pop("bf16", None)  # without the instruction the loop did not run natively
    if "avx512_vnni" not in cpu_flags():
        peak.pop("int8", None)
    if "int8" in peak:  # the VNNI vector peak: INT8's roofline on a CPU without AMX
        peak["int8_vnni"] = peak.pop("int8")
    return peak


def matrix_peak(threads: int, n: int = 2048, rounds: int = 5) -> dict[str, float]:
    """GFLOP/s (GOP/s for INT8) of one large matrix product through well-kept libraries, the
    matrix units (AMX tiles, VNNI) a convolution can reach and AVX-512 FMA loops (peak.c) do
    not see: torch's bf16 matmul and ``torch._int_mm`` (oneDNN), and OpenVINO's MatMul in bf16
    and INT8 (a FakeQuantize'd input times INT8 weights: its low-precision path, the one the
    INT8 generator runs; ``torch._int_mm`` on CPU measured well below it here). Each of
    ``bf16_matmul`` / ``int8_matmul`` is the best library's figure; ``*_torch`` / ``*_openvino``
    keep each one. {} when neither library is installed."""
    import time

    out: dict[str, float] = {}

    def timed(name, fn):
        # Wall clock, and CPU time x threads (what the cores do when they are all ours: on a
        # shared machine the wall clock understates the peak); the higher of the two counts.
        try:
            fn()
            t, c = time.perf_counter(), time.process_time()
            for _ in range(rounds):
                fn()
            wall, cpu = time.perf_counter() - t, (time.process_time() - c) / threads
            out[name] = 2 * n ** 3 * rounds / min(wall, cpu) / 1e9
        except (RuntimeError, TypeError):  # no kernel for this dtype in this build
            pass

    try:
        import torch

        torch.set_num_threads(threads)
        a, b = torch.randn(n, n).to(torch.bfloat16), torch.randn(n, n).to(torch.bfloat16)
        timed("bf16_matmul_torch", lambda: torch.matmul(a, b))
        i, j = (torch.randint(-128, 128, (n, n), dtype=torch.int8) for _ in range(2))
        if hasattr(torch, "_int_mm"):
            timed("int8_matmul_torch", lambda: torch._int_mm(i, j))
    except ImportError:
        pass
    try:
        for precision in ("bf16", "int8"):
            request, x = _openvino_matmul(precision, n, threads)
            timed(f"{precision}_matmul_openvino", lambda: request.infer({0: x}))
    except ImportError:
        pass
    for precision in ("bf16", "int8"):
        found = [v for k, v in out.items() if k.startswith(f"{precision}_matmul_")]
        if found:
            out[f"{precision}_matmul"] = max(found)
    return out


def _openvino_matmul(precision: str, n: int, threads: int):
    """An (n x n) @ (n x n) OpenVINO model in ``precision``; returns (infer request, input)."""
    import openvino as ov
    from openvino import opset13 as ops

    x = ops.parameter([n, n], np.float32, name="x")
    w = np.random.default_rng(0).integers(-127, 128, (n, n)).astype(np.int8)
    if precision == "int8":  # what NNCF's QDQ becomes: FakeQuantize in, INT8 weights
        one = ops.constant(np.float32(1))
        lo = ops.constant(np.float32(-1))
        xq = ops.fake_quantize(x, lo, one, lo, one, 256)
        y = ops.matmul(xq, ops.multiply(ops.convert(ops.constant(w), np.float32),
                                        ops.constant(np.float32(0.01))), False, True)
    else:
        y = ops.matmul(x, ops.constant(w.astype(np.float32)), False, True)
    compiled = ov.Core().compile_model(ov.Model([y], [x]), "CPU", {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": str(threads), "PERFORMANCE_HINT": "LATENCY"})
    x = np.random.default_rng(1).uniform(-1, 1, (n, n)).astype(np.float32)
    return compiled.create_infer_request(), x


def make_engine(model, provider: str, precision: str, batch_size: int):
    """The Engine on exactly this provider and precision, or a skip that says why not."""
    from p2p.runtime.engine import Engine

    extra = {"precision": "fp32" if precision == "default" else precision}
    try:
        engine = Engine(model, provider, batch_size=batch_size, **extra)
    except TypeError as e:  # this Engine has no precision= yet
        pytest.skip(f"Engine cannot run {provider} {precision}: {e}")
    except ProviderError as e:
        pytest.skip(f"provider {provider} cannot run here: {e}")
    assert engine.provider == provider, f"asked for {provider}, runs {engine.provider}"
    return engine


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """dB between two outputs in [-1, 1] (peak-to-peak 2), by p2p's one PSNR, uncapped."""
    return metrics.psnr(np.asarray(a), np.asarray(b), data_range=2.0, cap=float("inf"))


def record(benchmark, machine: dict, *, kind: str, provider: str, precision: str,
           batch_size: int, images_per_round: int, **extra) -> None:
    """Facts first (so they are there even when a run is skipped), images/s after the run."""
    benchmark.extra_info.update(kind=kind, provider=provider, precision=precision,
                                batch_size=batch_size, machine=machine, **extra)
    benchmark.extra_info["images_per_round"] = images_per_round


def cpu_timed(fn, clock: dict, skip: int = 0):
    """``fn`` wrapped to add its process CPU seconds to ``clock["cpu"]`` and calls to
    ``clock["calls"]``: a rate per CPU-second that other load on a shared machine barely
    moves (in-process inference threads included; spin-waiting counts, so it is a floor).
    The first ``skip`` calls (pytest-benchmark's warm-up rounds) are not counted."""
    import time

    clock.setdefault("cpu", 0.0)
    clock.setdefault("calls", 0)

    seen = [0]

    def run(*args):
        c = time.process_time()
        try:
            return fn(*args)
        finally:
            seen[0] += 1
            if seen[0] > skip:
                clock["cpu"] += time.process_time() - c
                clock["calls"] += 1
    return run


def finish(benchmark, clock: dict | None = None, threads: int | None = None) -> None:
    """images/s from the median and the best round; nothing when benchmarks are disabled.
    With ``clock`` (``cpu_timed``): ``cpu_images_per_s`` = images per CPU-second x threads."""
    stats = getattr(benchmark, "stats", None)
    if not stats:
        return
    n = benchmark.extra_info["images_per_round"]
    benchmark.extra_info["images_per_s"] = round(n / stats.stats.median, 2)
    benchmark.extra_info["images_per_s_best"] = round(n / stats.stats.min, 2)
    if clock and clock.get("cpu") and threads:
        benchmark.extra_info["cpu_images_per_s"] = round(
            n * clock["calls"] / clock["cpu"] * threads, 2)


def export_random_unet(folder: Path, **config) -> Path:
    """``folder/generator.onnx``: a seeded random U-Net-256 (ngf 64, batch norm) saved as a
    pix2pix (junyanz layout) generator state_dict, the shortest valid export source, then
    exported by p2p-export's own code with ``config`` (``ExportConfig`` fields). torch needed."""
    import torch

    from p2p.export.onnx import ExportConfig
    from p2p.export.onnx import main as export
    from p2p.trainer.models import ModelConfig, UnetGenerator, init_weights

    torch.manual_seed(0)
    source = folder / "latest_net_G.pth"
    torch.save(init_weights(UnetGenerator(ModelConfig())).state_dict(), source)
    out = folder / "generator.onnx"
    export(ExportConfig(source=source, output=out, **config))
    return out
