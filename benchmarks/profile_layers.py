"""Where a model's time goes in OpenVINO: per-layer counters (PERF_COUNT) of one image.

    python benchmarks/profile_layers.py runs/x/export/generator.int8.onnx [--precision int8]

Prints, per layer type and kernel (``exec_type``: brgconv_avx512_I8 is INT8 on VNNI,
``ref_*`` a reference kernel, Reorder a layout copy), the best-of-rounds time and share;
then each (de)convolution with its shape and GOP/s, so the layers far below the matrix peak
stand out (issue 21: on a 2-core Zen 4 the INT8 U-Net's convolutions took 97% of the time;
the last up-convolution, 3 output channels, ~7% for 1.6% of the MACs; the 1x1-4x4
bottleneck layers are weight-bandwidth bound; MVN, the float ops between Q/DQ pairs and
reorders ~2.5% together). One stream, one thread: the kernels' own efficiency, no
scheduling. Times are wall clock: on a shared machine compare layers, not runs.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--precision", default=None, help="fp32 | bf16 | int8 (default: the file's)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    import openvino as ov

    from p2p.runtime.backends.openvino import _OV_PRECISION, subpixel_deconvolutions
    from p2p.runtime.modelfile import read_metadata

    meta = read_metadata(args.model)
    precision = args.precision or meta.model_precision
    core = ov.Core()
    model = core.read_model(str(args.model))
    rewritten = subpixel_deconvolutions(model)  # what the engine compiles
    size = meta.image_size
    model.reshape({model.input(0).get_any_name(): [1, meta.in_channels, size, size]})
    compiled = core.compile_model(model, "CPU", {
        "PERF_COUNT": "YES", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "1",
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision]})
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).uniform(-1, 1, (1, meta.in_channels, size, size))
    x = x.astype(np.float32)
    request.infer({0: x})
    best: dict[str, float] = {}
    kinds: dict[str, tuple[str, str]] = {}
    for _ in range(args.rounds):
        request.infer({0: x})
        for p in request.profiling_info:
            t = p.real_time.total_seconds()
            best[p.node_name] = min(best.get(p.node_name, t), t)
            kinds[p.node_name] = (p.node_type, p.exec_type)
    total = sum(best.values())
    by_kind = collections.defaultdict(lambda: [0.0, 0])
    for name, t in best.items():
        by_kind[kinds[name]][0] += t
        by_kind[kinds[name]][1] += 1
    print(f"{args.model.name}, {precision}, 1 image, 1 thread: {1000 * total:.1f} ms "
          f"({rewritten} up-convolutions as sub-pixel convolutions)")
    for (node, kernel), (t, n) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
        if t > 0:
            print(f"  {1000 * t:8.2f} ms {100 * t / total:5.1f}%  {n:3d} x {node} ({kernel})")
    print("convolutions (GOP/s = 2 x MACs / time):")
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        name = op.get_friendly_name()
        if kind not in ("Convolution", "Deconvolution") or name not in best:
            continue
        out = list(op.get_output_partial_shape(0).to_shape())
        c_in = list(op.input(0).get_partial_shape().to_shape())[1]
        kernel = list(op.input(1).get_partial_shape().to_shape())[2:]
        taps = int(np.prod(kernel)) if kind == "Convolution" else 4  # 4x4 stride-2 up-conv
        macs = int(np.prod(out)) * c_in * taps
        t = best[name]
        print(f"  {kind[:6]:6s} {info['runtimePrecision'].astype(str):4s} out {out} "
              f"c_in {c_in:4d}: {1000 * t:6.2f} ms {2 * macs / t / 1e9 if t else 0:7.0f} GOP/s")


if __name__ == "__main__":
    main()
