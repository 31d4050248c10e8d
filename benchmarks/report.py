"""Turn a ``pytest benchmarks/ --benchmark-json=FILE`` run into BENCHMARKS.md's tables.

    python benchmarks/report.py bench.json > tables.md

Everything comes from one run, side by side: ratios are to the PyTorch eager NCHW baseline
of the same run and batch size, "% of peak" is to the peak measured by ``peak.c`` in the
same run (the issue's figures, 42 and 77 images/s, only when no measurement exists), and
each target of issue 5 is checked with its measured value.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ISSUE_PEAK = {"fp32": 42.0, "bf16": 77.0}  # images/s; issue 5's estimate for this machine
ENGINE_ROWS = [("eager", "torch-nchw", "fp32"), ("eager", "torch-channels_last", "fp32"),
               ("engine", "cpu", "fp32"), ("engine", "openvino", "fp32"),
               ("engine", "openvino", "bf16")]
E2E_ROWS = [("cpu", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")]
BATCHES = (1, 8, 16)


def load(path: Path) -> tuple[dict, dict]:
    data = json.loads(Path(path).read_text())
    cases, machine = {}, {}
    for b in data["benchmarks"]:
        e = b.get("extra_info", {})
        if "images_per_s" not in e:
            continue
        cases[(e["kind"], e["provider"], e["precision"], e["batch_size"])] = e
        machine = e.get("machine", machine)
    machine["datetime"] = data.get("datetime", "")
    return cases, machine


def fmt(x, spec=".1f", none="–"):
    return none if x is None else format(x, spec)


def rate(cases, *key):
    e = cases.get(key)
    return e["images_per_s"] if e else None


def peaks(machine) -> tuple[dict, str]:
    measured = machine.get("peak_images_per_s") or {}
    if "fp32" in measured:
        return {**ISSUE_PEAK, **measured}, "measured by benchmarks/peak.c in this run"
    return ISSUE_PEAK, "issue 5's estimate (no measurement in this run)"


def model_table(cases, machine) -> list[str]:
    peak, _ = peaks(machine)
    out = ["| case | precision | " + " | ".join(f"batch {b}" for b in BATCHES)
           + " | × eager NCHW (batch 8) | % of peak (batch 8) | PSNR vs FP32 |",
           "|---|---|" + "---:|" * (len(BATCHES) + 3)]
    for kind, provider, precision in ENGINE_ROWS:
        rates = [rate(cases, kind, provider, precision, b) for b in BATCHES]
        if not any(rates):
            continue
        base = rate(cases, "eager", "torch-nchw", "fp32", 8)
        r8 = rate(cases, kind, provider, precision, 8)
        ratio = r8 / base if r8 and base else None
        pct = 100 * r8 / peak[precision] if r8 and precision in peak else None
        e8 = cases.get((kind, provider, precision, 8), {})
        name = f"PyTorch eager, {provider[6:]}" if kind == "eager" else f"Engine, {provider}"
        out.append(f"| {name} | {precision} | " + " | ".join(fmt(r) for r in rates)
                   + f" | {fmt(ratio, '.2f')}× | {fmt(pct, '.0f')}% | "
                   + (("reference" if provider == "cpu" else f"{e8['psnr_vs_fp32_db']:.1f} dB")
                      if kind == "engine" and e8 else "–")
                   + " |")
    return out


def e2e_table(cases) -> list[str]:
    out = ["| provider | precision | " + " | ".join(f"batch {b}" for b in BATCHES)
           + " | % of model-only (batch 8) | incl. start-up (batch 16) | peak RSS (batch 16) |",
           "|---|---|" + "---:|" * (len(BATCHES) + 3)]
    for provider, precision in E2E_ROWS:
        rates = [rate(cases, "translate", provider, precision, b) for b in BATCHES]
        if not any(rates):
            continue
        r8, m8 = (rate(cases, k, provider, precision, 8) for k in ("translate", "engine"))
        e16 = cases.get(("translate", provider, precision, 16), {})
        out.append(f"| {provider} | {precision} | " + " | ".join(fmt(r) for r in rates)
                   + f" | {fmt(100 * r8 / m8 if r8 and m8 else None, '.0f')}% | "
                   + f"{fmt(e16.get('wall_images_per_s'))} | "
                   + f"{fmt(e16.get('peak_rss_mb'), '.0f')} MB |")
    return out


def targets(cases, machine) -> list[str]:
    peak, _ = peaks(machine)
    eager8 = rate(cases, "eager", "torch-nchw", "fp32", 8)
    fp32 = {p: rate(cases, "engine", p, "fp32", 8) for p in ("cpu", "openvino")}
    best_p = max((p for p in fp32 if fp32[p]), key=lambda p: fp32[p], default=None)
    best = fp32.get(best_p)
    bf16 = rate(cases, "engine", "openvino", "bf16", 8)
    rows = []

    def row(what, value, goal, ok):
        mark = "–" if ok is None else ("met" if ok else "**missed**")
        rows.append(f"| {what} | {value} | {goal} | {mark} |")

    ratio = best / eager8 if best and eager8 else None
    row(f"Engine FP32 batch 8 ({best_p}) vs eager NCHW batch 8", f"{fmt(ratio, '.2f')}×",
        "≥ 2.0×", None if ratio is None else ratio >= 2.0)
    row("Engine FP32 batch 8, images/s", fmt(best), f"≥ 34 (issue); ≥ {0.8 * peak['fp32']:.1f} "
        "(80% of measured peak)", None if best is None else best >= 0.8 * peak["fp32"])
    speedup = bf16 / best if bf16 and best else None
    row("Reduced precision (openvino bf16) vs Engine FP32, batch 8", f"{fmt(speedup, '.2f')}×",
        "≥ 1.4×", None if speedup is None else speedup >= 1.4)
    db = cases.get(("engine", "openvino", "bf16", 8), {}).get("psnr_vs_fp32_db")
    row("bf16 PSNR vs FP32", f"{fmt(db)} dB", "≥ 45 dB", None if db is None else db >= 45)
    for provider, precision in E2E_ROWS:
        for b in BATCHES:
            e2e, model = (rate(cases, k, provider, precision, b) for k in ("translate", "engine"))
            if e2e and model:
                row(f"End to end / model-only, {provider} {precision}, batch {b}",
                    f"{100 * e2e / model:.0f}%", "≥ 85%", e2e >= 0.85 * model)
        rss = cases.get(("translate", provider, precision, 16), {}).get("peak_rss_mb")
        if rss:
            row(f"Peak RSS, end to end batch 16, {provider} {precision}", f"{rss:.0f} MB",
                "≤ 1536 MB", rss <= 1536)
    trt, eager_gpu = (rate(cases, k, p, q, 32) for k, p, q in
                      (("engine", "tensorrt", "fp16"), ("eager", "torch-cuda", "fp32")))
    gpu = trt / eager_gpu if trt and eager_gpu else None
    row("TensorRT FP16 batch 32 vs eager FP32 (GPU)", f"{fmt(gpu, '.2f')}×", "≥ 5×",
        None if gpu is None else gpu >= 5)
    return ["| target | measured | goal | |", "|---|---:|---|---|"] + rows


def machine_lines(machine) -> list[str]:
    _, source = peaks(machine)
    v = machine.get("versions", {})
    gf = machine.get("peak_gflops", {})
    return [
        f"- CPU: {machine.get('cpu', '?')}, {machine.get('physical_cores', '?')} physical cores "
        f"({machine.get('logical_cpus', '?')} logical), AVX512_BF16: "
        f"{'yes' if machine.get('avx512_bf16') else 'no'}, AMX: "
        f"{'yes' if machine.get('amx') else 'no'}",
        f"- Peak: FP32 {fmt(gf.get('fp32'), '.0f')} GFLOP/s, BF16 {fmt(gf.get('bf16'), '.0f')} "
        f"GFLOP/s = {fmt(machine.get('peak_images_per_s', {}).get('fp32'))} / "
        f"{fmt(machine.get('peak_images_per_s', {}).get('bf16'))} images/s at 12.1 GFLOP an "
        f"image ({source})",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- Run: {machine.get('datetime', '')}",
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path)
    args = ap.parse_args()
    cases, machine = load(args.json)
    parts = ["### Model only (images/s, median of rounds)", *model_table(cases, machine), "",
             "### End to end: p2p-translate, 64 facades val images (images/s)",
             *e2e_table(cases), "", "### Targets (issue 5)", *targets(cases, machine), "",
             "### Machine", *machine_lines(machine)]
    print("\n".join(parts))


if __name__ == "__main__":
    main()
