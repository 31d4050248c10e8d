"""The p2p Engine, model only: a batch already in memory through ``Engine.run``.

Every CPU provider that can run here (onnxruntime ``cpu``, ``openvino`` FP32) and the
reduced-precision CPU paths (``openvino`` BF16, >= 45 dB PSNR from the FP32 output, and
INT8, the p2p-export --int8 file, >= 40 dB). A provider that cannot run here is skipped with its ProviderError as reason.
"""

from __future__ import annotations

import pytest

from benchlib import BATCH_SIZES, CPU_CASES, MIN_PSNR, finish, make_engine, psnr, record


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("provider, precision", CPU_CASES)
def test_engine(benchmark, machine, model_path, images, fp32_reference, provider, precision,
                batch_size, request):
    benchmark.group = f"model-only, batch {batch_size}"
    record(benchmark, machine, kind="engine", provider=provider, precision=precision,
           batch_size=batch_size, images_per_round=batch_size)
    model = request.getfixturevalue("int8_model_path") if precision == "int8" else model_path
    with make_engine(model, provider, precision, batch_size) as engine:
        benchmark.extra_info["engine"] = engine.describe()
        x = images[:batch_size]
        y = benchmark.pedantic(engine.run, args=(x,), rounds=5 if batch_size > 1 else 10,
                               warmup_rounds=2)
    assert y.shape == x.shape
    finish(benchmark)
    quality = psnr(y, fp32_reference[:batch_size])
    benchmark.extra_info["psnr_vs_fp32_db"] = round(min(quality, 999.0), 2)
    if precision != "fp32":
        bound = MIN_PSNR[precision]
        assert quality >= bound, f"{provider} {precision}: {quality:.1f} dB < {bound}"
    else:
        assert quality > 80, f"{provider} fp32 differs from onnxruntime fp32: {quality:.1f} dB"
