"""PyTorch's best as a peer (issue 21): what an expert PyTorch user would run instead of p2p.

- ``torch.compile`` (inductor, weights frozen, channels_last) FP32: the compiled eager model;
- PT2E INT8: ``torch.export`` -> ``prepare_pt2e`` with the X86 inductor quantizer (torchao,
  where torch 2.13 ships PT2E quantization) -> calibration on the same facades train images
  as p2p's INT8 export (48, through p2p-export's own loader) -> ``convert_pt2e`` ->
  ``torch.compile`` (inductor's INT8 oneDNN convolutions).

Both run the same weights as the p2p rows (seed 0, ``init_weights``) in eval mode, so with
batch norm's running statistics (lighter than p2p's per-image normalisation: the peers get
the advantage). Batch 8 only: the targets are at batch 8, and each batch size is a
compilation of minutes on two cores. Skipped (with why) without torchao.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchlib import FACADES, cpu_timed, finish, psnr, record
from p2p.runtime.host import physical_cores

torch = pytest.importorskip("torch", reason="the PyTorch peers need torch")
BATCH = 8
CALIBRATION_IMAGES = 48  # what benchmarks/conftest.py's INT8 export calibrates on


@pytest.fixture(scope="module")
def generator():
    from p2p.trainer.models import ModelConfig, UnetGenerator, init_weights

    torch.manual_seed(0)
    torch.set_num_threads(physical_cores())
    return init_weights(UnetGenerator(ModelConfig())).eval()


@pytest.fixture(scope="module")
def eager_out(generator, images):
    with torch.inference_mode():
        return generator(torch.from_numpy(images[:BATCH])).numpy()


def _inductor():
    import torch._inductor.config as config

    config.freezing = True  # constant weights: prepacked for oneDNN, what inference wants
    torch._dynamo.reset()


def _time(benchmark, fn, x):
    clock = {}
    with torch.no_grad():
        y = benchmark.pedantic(cpu_timed(fn, clock, skip=2), args=(x,), rounds=5, warmup_rounds=2)
    finish(benchmark, clock, torch.get_num_threads())
    return y


def test_torch_compile_fp32(benchmark, machine, generator, images, eager_out):
    benchmark.group = f"model-only, batch {BATCH}"
    record(benchmark, machine, kind="peer", provider="torch-compile", precision="fp32",
           batch_size=BATCH, images_per_round=BATCH, threads=torch.get_num_threads())
    _inductor()
    net = generator.to(memory_format=torch.channels_last)
    compiled = torch.compile(net)
    x = torch.from_numpy(images[:BATCH]).contiguous(memory_format=torch.channels_last)
    y = _time(benchmark, compiled, x)
    benchmark.extra_info["psnr_vs_eager_db"] = round(min(psnr(y.numpy(), eager_out), 999), 2)
    assert psnr(y.numpy(), eager_out) > 60


def test_torch_pt2e_int8(benchmark, machine, generator, images, eager_out, model_path):
    pt2e = pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e",
                               reason="PT2E quantization needs torchao (pip install torchao)")
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    from p2p.export.int8 import load_calibration
    from p2p.runtime.modelfile import read_metadata

    benchmark.group = f"model-only, batch {BATCH}"
    record(benchmark, machine, kind="peer", provider="torch-pt2e", precision="int8",
           batch_size=BATCH, images_per_round=BATCH, threads=torch.get_num_threads(),
           calibration_images=CALIBRATION_IMAGES)
    calib = load_calibration(FACADES / "train", read_metadata(model_path), CALIBRATION_IMAGES)
    x = torch.from_numpy(images[:BATCH])
    with torch.no_grad():
        exported = torch.export.export(generator, (x,)).module()
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = pt2e.prepare_pt2e(exported, quantizer)
        arrays = np.concatenate(calib.arrays)
        for i in range(0, len(arrays) - BATCH + 1, BATCH):  # the graph's batch is static
            prepared(torch.from_numpy(arrays[i:i + BATCH]))
        converted = pt2e.convert_pt2e(prepared)
        _inductor()
        compiled = torch.compile(converted)
    y = _time(benchmark, compiled, x)
    quality = psnr(y.numpy(), eager_out)
    benchmark.extra_info["psnr_vs_fp32_db"] = round(min(quality, 999.0), 2)
    assert quality > 25, f"PT2E INT8 output is {quality:.1f} dB from FP32: not a fair peer"
