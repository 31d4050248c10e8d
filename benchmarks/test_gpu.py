"""GPU: the Engine on TensorRT (FP16 and FP32) and CUDA (FP32) at batch 32, each checked
against the onnxruntime CPU FP32 output of the same inputs (PSNR, dB), and PyTorch eager FP32
on the same card as the baseline (target: TensorRT FP16 >= 5x eager).

The engine cases need no torch (the model comes from P2P_BENCH_MODEL, or is exported with
torch when it is installed); every case is skipped, with the reason, where the CUDA driver
reports no device or the provider does not start.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchlib import MIN_PSNR, finish, psnr, record
from p2p.runtime import host
from p2p.runtime.errors import ProviderError

BATCH = 32
FP32_PSNR = 60.0  # GPU FP32 (no TF32) against CPU FP32: only summation order differs
_DEVICES, _WHY = host.cuda_devices()
# Skip before any fixture runs (exporting the model and the CPU reference take a while).
pytestmark = pytest.mark.skipif(not _DEVICES, reason=f"no CUDA device: {_WHY}")


def gpu_card() -> str:
    return host.gpu_identity(0)


@pytest.fixture(scope="module")
def gpu_images(images):
    return np.concatenate([images, images])[:BATCH]  # 32 real inputs from the 16


@pytest.fixture(scope="module")
def cpu_fp32(model_path, gpu_images):
    """onnxruntime CPU FP32 output of ``gpu_images``: every GPU case is measured against it."""
    from p2p.runtime.engine import Engine

    with Engine(model_path, "cpu", batch_size=8) as engine:
        return engine.run(gpu_images)


@pytest.mark.parametrize("provider, precision", [("tensorrt", "fp16"), ("tensorrt", "fp32"),
                                                 ("cuda", "fp32")])
def test_engine_gpu(benchmark, machine, model_path, gpu_images, cpu_fp32, provider, precision):
    card = gpu_card()
    from p2p.runtime.engine import Engine

    benchmark.group = f"gpu, batch {BATCH}"
    record(benchmark, machine, kind="engine", provider=provider, precision=precision,
           batch_size=BATCH, images_per_round=BATCH, gpu=card)
    try:
        engine = Engine(model_path, provider, batch_size=BATCH, fp16=precision == "fp16")
    except ProviderError as e:
        pytest.skip(f"provider {provider} cannot run here: {e}")
    with engine:
        assert engine.provider == provider
        benchmark.extra_info["engine"] = engine.describe()
        y = benchmark.pedantic(engine.run, args=(gpu_images,), rounds=20, warmup_rounds=3)
    finish(benchmark)
    quality = psnr(y, cpu_fp32)
    benchmark.extra_info["psnr_vs_fp32_db"] = round(min(quality, 999.0), 2)
    floor = MIN_PSNR if precision == "fp16" else FP32_PSNR
    assert quality >= floor, f"{provider} {precision}: {quality:.1f} dB < {floor} vs CPU FP32"


def test_eager_fp32_cuda(benchmark, machine, gpu_images):
    card = gpu_card()
    torch = pytest.importorskip("torch", reason="the eager GPU baseline needs torch")
    if not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} sees no CUDA device (a CPU build?)")
    from p2p.trainer.models import ModelConfig, UnetGenerator, init_weights

    benchmark.group = f"gpu, batch {BATCH}"
    record(benchmark, machine, kind="eager", provider="torch-cuda", precision="fp32",
           batch_size=BATCH, images_per_round=BATCH, gpu=card)
    # FP32 means FP32: cuDNN and cuBLAS would otherwise run convolutions as TF32.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True  # one input shape: pick the fastest algorithm once
    torch.manual_seed(0)
    net = init_weights(UnetGenerator(ModelConfig())).eval()
    x = torch.from_numpy(gpu_images)
    with torch.inference_mode():
        reference = net(x).numpy()  # the same network on the CPU, FP32
    net, xg = net.cuda(), x.cuda()

    def run():
        with torch.inference_mode():
            y = net(xg)
        torch.cuda.synchronize()
        return y

    y = benchmark.pedantic(run, rounds=20, warmup_rounds=3)
    finish(benchmark)
    quality = psnr(y.cpu().numpy(), reference)
    benchmark.extra_info["psnr_vs_fp32_db"] = round(min(quality, 999.0), 2)
    assert quality >= FP32_PSNR, f"eager cuda fp32: {quality:.1f} dB < {FP32_PSNR} vs CPU"
