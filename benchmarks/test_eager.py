"""Baselines: the reference implementation's way to run the generator, PyTorch eager FP32.

What users run otherwise: ``UnetGenerator`` in eval mode under ``torch.inference_mode``,
NCHW (the default) and channels_last (oneDNN's preferred layout), threads = physical cores.
"""

from __future__ import annotations

import pytest

from benchlib import BATCH_SIZES, finish, record
from p2p.runtime.host import physical_cores

torch = pytest.importorskip("torch", reason="the eager baselines need torch")


@pytest.fixture(scope="module")
def generator():
    from p2p.trainer.models import ModelConfig, UnetGenerator, init_weights

    torch.manual_seed(0)
    torch.set_num_threads(physical_cores())
    return init_weights(UnetGenerator(ModelConfig())).eval()


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_eager_fp32(benchmark, machine, generator, images, layout, batch_size):
    benchmark.group = f"model-only, batch {batch_size}"
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    net = generator.to(memory_format=fmt)
    x = torch.from_numpy(images[:batch_size]).contiguous(memory_format=fmt)
    record(benchmark, machine, kind="eager", provider=f"torch-{layout}", precision="fp32",
           batch_size=batch_size, images_per_round=batch_size, threads=torch.get_num_threads())

    def run():
        with torch.inference_mode():
            return net(x)

    y = benchmark.pedantic(run, rounds=5 if batch_size > 1 else 10, warmup_rounds=1)
    assert tuple(y.shape) == (batch_size, 3, 256, 256)
    finish(benchmark)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_eager_bf16_autocast(benchmark, machine, generator, images, batch_size):
    """The best a PyTorch user gets without an export: channels_last under
    ``torch.autocast("cpu", torch.bfloat16)`` (oneDNN's BF16/AMX convolutions)."""
    benchmark.group = f"model-only, batch {batch_size}"
    net = generator.to(memory_format=torch.channels_last)
    x = torch.from_numpy(images[:batch_size]).contiguous(memory_format=torch.channels_last)
    record(benchmark, machine, kind="eager", provider="torch-channels_last", precision="bf16",
           batch_size=batch_size, images_per_round=batch_size, threads=torch.get_num_threads())

    def run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return net(x)

    y = benchmark.pedantic(run, rounds=5 if batch_size > 1 else 10, warmup_rounds=1)
    assert tuple(y.shape) == (batch_size, 3, 256, 256)
    finish(benchmark)
