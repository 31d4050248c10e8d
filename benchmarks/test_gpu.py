"""GPU: TensorRT FP16 through the Engine at batch 32 against PyTorch eager FP32 on the same
card (target: >= 5x). Skipped, with the reason, where there is no GPU provider."""

from __future__ import annotations

import pytest

from benchlib import finish, make_engine, record

BATCH = 32


def gpu_name() -> str:
    torch = pytest.importorskip("torch", reason="the eager GPU baseline needs torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch (this machine has no GPU)")
    return torch.cuda.get_device_name(0)


@pytest.fixture(scope="module")
def gpu_images(images):
    import numpy as np

    return np.concatenate([images, images])[:BATCH]  # 32 real inputs from the 16


def test_eager_fp32_cuda(benchmark, machine, gpu_images):
    card = gpu_name()
    import torch

    from p2p.trainer.models import ModelConfig, UnetGenerator, init_weights

    benchmark.group = f"gpu, batch {BATCH}"
    record(benchmark, machine, kind="eager", provider="torch-cuda", precision="fp32",
           batch_size=BATCH, images_per_round=BATCH, gpu=card)
    torch.backends.cudnn.benchmark = True
    net = init_weights(UnetGenerator(ModelConfig())).eval().cuda()
    x = torch.from_numpy(gpu_images).cuda()

    def run():
        with torch.inference_mode():
            y = net(x)
        torch.cuda.synchronize()
        return y

    benchmark.pedantic(run, rounds=20, warmup_rounds=3)
    finish(benchmark)


@pytest.mark.parametrize("provider, precision", [("tensorrt", "fp16"), ("cuda", "fp32")])
def test_engine_gpu(benchmark, machine, model_path, gpu_images, provider, precision):
    card = gpu_name()
    benchmark.group = f"gpu, batch {BATCH}"
    record(benchmark, machine, kind="engine", provider=provider, precision=precision,
           batch_size=BATCH, images_per_round=BATCH, gpu=card)
    # TensorRT runs FP16 by default in the Engine; precision labels what the case measures.
    with make_engine(model_path, provider, "default", BATCH) as engine:
        benchmark.extra_info["engine"] = engine.describe()
        y = benchmark.pedantic(engine.run, args=(gpu_images,), rounds=20, warmup_rounds=3)
    assert y.shape == gpu_images.shape
    finish(benchmark)
