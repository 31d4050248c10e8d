"""The p2p Engine, model only: a batch already in memory through ``Engine.run``.

Every CPU provider that can run here (onnxruntime ``cpu``, ``openvino`` FP32) and the
reduced-precision CPU paths (``openvino`` BF16, >= 45 dB PSNR from the FP32 output, and
INT8, the p2p-export --int8 file, >= 40 dB). A provider that cannot run here is skipped with its ProviderError as reason.
"""

from __future__ import annotations

import pytest

from benchlib import (BATCH_SIZES, CPU_CASES, MIN_PSNR, cpu_timed, finish, make_engine, psnr,
                      record)
from p2p.runtime.host import physical_cores


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
        clock = {}
        y = benchmark.pedantic(cpu_timed(engine.run, clock, skip=2), args=(x,),
                               rounds=5 if batch_size > 1 else 10, warmup_rounds=2)
    assert y.shape == x.shape
    finish(benchmark, clock, physical_cores())
    quality = psnr(y, fp32_reference[:batch_size])
    benchmark.extra_info["psnr_vs_fp32_db"] = round(min(quality, 999.0), 2)
    if precision != "fp32":
        bound = MIN_PSNR[precision]
        assert quality >= bound, f"{provider} {precision}: {quality:.1f} dB < {bound}"
    else:
        assert quality > 80, f"{provider} fp32 differs from onnxruntime fp32: {quality:.1f} dB"


LAYOUTS = ((1, None), (2, 1))  # (streams, threads per stream; None = all): 1x2 and 2x1 here


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_openvino_layout(benchmark, machine, model_path, images, batch_size):
    """Issue 21: is the stream/thread layout the engine compiles for a batch size the fastest?
    Each layout (one stream with every thread, or one single-thread stream per core) is
    timed side by side, interleaved, best round each; ``engine_layout`` is what ``Engine``
    (so p2p-translate) compiles for this batch size, ``fastest_layout`` what measured best."""
    from p2p.runtime.backends.openvino import OpenVINOSession
    from p2p.runtime.host import physical_cores

    pytest.importorskip("openvino")
    benchmark.group = f"layout, batch {batch_size}"
    cores = physical_cores()
    record(benchmark, machine, kind="layout", provider="openvino", precision="fp32",
           batch_size=batch_size, images_per_round=batch_size)
    sessions = {}
    for streams, per in LAYOUTS:
        streams = min(streams, cores)
        s = OpenVINOSession(model_path, "fp32", cores, batch_size, streams=streams)
        sessions[f"{streams}x{cores // streams}"] = s
    with make_engine(model_path, "openvino", "fp32", batch_size) as engine:
        layout = engine._backend.describe()
    x = images[:batch_size]
    import time

    best = {k: float("inf") for k in sessions}
    for s in sessions.values():
        s.run(x)
    for _ in range(3):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(x)
            best[k] = min(best[k], time.perf_counter() - t)
    rates = {k: round(batch_size / t, 2) for k, t in best.items()}
    fastest = max(rates, key=rates.get)
    chosen = next((k for k in rates if f"{k.split('x')[0]} stream" in layout), "?")
    benchmark.pedantic(lambda: sessions[chosen if chosen in sessions else fastest].run(x),
                       rounds=1, warmup_rounds=0)
    for s in sessions.values():
        s.close()
    benchmark.extra_info.update(layouts=rates, engine_layout=chosen, fastest_layout=fastest,
                                engine_describe=layout,
                                images_per_s=rates.get(chosen, rates[fastest]))
