"""Turn a ``pytest benchmarks/ --benchmark-json=FILE`` run into BENCHMARKS.md's tables.

    python benchmarks/report.py bench.json > tables.md

Everything comes from one run, side by side: ratios are to the PyTorch eager NCHW baseline
of the same run and batch size, "% of peak" is to the peak measured by ``peak.c`` in the
same run (the issue's figures, 42 and 77 images/s, only when no measurement exists), and
each target of issues 5 and 11 is checked with its measured value. The roofline knows AMX:
BF16 and INT8 rows are put against the matrix peak measured through oneDNN (torch bf16
matmul, ``torch._int_mm``, OpenVINO bf16/INT8 MatMul) when the run has it, not only
against AVX-512 FMA loops.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ISSUE_PEAK = {"fp32": 42.0, "bf16": 77.0}  # images/s; issue 5's estimate for this machine
ENGINE_ROWS = [("eager", "torch-nchw", "fp32"), ("eager", "torch-channels_last", "fp32"),
               ("eager", "torch-channels_last", "bf16"),
               ("engine", "cpu", "fp32"), ("engine", "openvino", "fp32"),
               ("engine", "openvino", "bf16"), ("engine", "openvino", "int8"),
               ("peer", "torch-compile", "fp32"), ("peer", "torch-pt2e", "int8")]
PEER_NAMES = {"torch-compile": "PyTorch torch.compile (inductor, channels_last)",
              "torch-pt2e": "PyTorch PT2E X86 inductor quantizer, compiled"}
E2E_ROWS = [("cpu", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]
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
    """images/s per precision at the roofline: the matrix-unit peak (AMX via oneDNN) where
    the run measured one, else peak.c's vector peak, else the issue's estimate."""
    measured = machine.get("peak_images_per_s") or {}
    if "fp32" not in measured and "bf16_matmul" not in measured:
        return ISSUE_PEAK, "issue 5's estimate (no measurement in this run)"
    out = {**ISSUE_PEAK, **{k: v for k, v in measured.items() if k in ("fp32", "bf16")}}
    for precision in ("bf16", "int8"):
        matrix = measured.get(f"{precision}_matmul")
        if matrix:
            out[precision] = max(matrix, out.get(precision, 0.0))
    return out, "measured in this run (peak.c FMA loops; matrix products in torch/openvino)"


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
        name = (f"PyTorch eager, {provider[6:]}" + (" autocast" if precision == "bf16" else "")
                if kind == "eager" else PEER_NAMES.get(provider, f"Engine, {provider}"))
        out.append(f"| {name} | {precision} | " + " | ".join(fmt(r) for r in rates)
                   + f" | {fmt(ratio, '.2f')}× | {fmt(pct, '.0f')}% | "
                   + (("reference" if provider == "cpu" else f"{e8['psnr_vs_fp32_db']:.1f} dB")
                      if kind == "engine" and e8 else
                      f"{e8['psnr_vs_fp32_db']:.1f} dB" if "psnr_vs_fp32_db" in e8 else "–")
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
    rows += issue11_targets(cases, eager8)
    trt, eager_gpu = (rate(cases, k, p, q, 32) for k, p, q in
                      (("engine", "tensorrt", "fp16"), ("eager", "torch-cuda", "fp32")))
    gpu = trt / eager_gpu if trt and eager_gpu else None
    row("TensorRT FP16 batch 32 vs eager FP32 (GPU)", f"{fmt(gpu, '.2f')}×", "≥ 5×",
        None if gpu is None else gpu >= 5)
    return ["| target | measured | goal | |", "|---|---:|---|---|"] + rows


def issue11_targets(cases, eager8) -> list[str]:
    """Issue 11: INT8 >= 10x eager FP32 NCHW at >= 40 dB; p2p-translate auto (400 images, start-up
    included) >= 5x; end to end INT8 >= 80% of model-only; BF16 >= 6x."""
    rows = []

    def row(what, value, goal, ok):
        mark = "–" if ok is None else ("met" if ok else "**missed**")
        rows.append(f"| {what} | {value} | {goal} | {mark} |")

    def times(r):
        return r / eager8 if r and eager8 else None

    int8 = rate(cases, "engine", "openvino", "int8", 8)
    x = times(int8)
    row("INT8 model-only batch 8 vs eager FP32 NCHW batch 8", f"{fmt(x, '.2f')}×", "≥ 10×",
        None if x is None else x >= 10)
    db = cases.get(("engine", "openvino", "int8", 8), {}).get("psnr_vs_fp32_db")
    row("INT8 PSNR vs FP32", f"{fmt(db)} dB", "≥ 40 dB", None if db is None else db >= 40)
    auto = cases.get(("translate-auto", "auto", "auto", 8), {})
    x = times(auto.get("images_per_s"))
    row(f"p2p-translate auto, 400 images incl. start-up ({auto.get('ran_on', '?')}) vs eager "
        "NCHW batch 8", f"{fmt(x, '.2f')}×", "≥ 5×", None if x is None else x >= 5)
    e2e = rate(cases, "translate", "openvino", "int8", 8)
    pct = 100 * e2e / int8 if e2e and int8 else None
    row("End to end INT8 / INT8 model-only, batch 8", f"{fmt(pct, '.0f')}%", "≥ 80%",
        None if pct is None else pct >= 80)
    x = times(rate(cases, "engine", "openvino", "bf16", 8))
    row("BF16 model-only batch 8 vs eager FP32 NCHW batch 8", f"{fmt(x, '.2f')}×", "≥ 6×",
        None if x is None else x >= 6)
    return rows


def issue21_targets(cases, machine) -> list[str]:
    """Issue 21: auto >= 0.95x the fastest explicit precision (a float file, a run folder);
    INT8 model-only >= 75% of the INT8 matrix peak, >= 1.3x PT2E INT8, >= 4x torch.compile
    FP32; p2p's default path (auto on a run folder, model-only: the INT8 row where INT8 runs
    natively) ahead of both peers."""
    rows = []

    def row(what, value, goal, ok):
        mark = "–" if ok is None else ("met" if ok else "**missed**")
        rows.append(f"| {what} | {value} | {goal} | {mark} |")

    def choice(target, precision):
        e = cases.get(("translate-choice", "all", "all", 8), {})
        return e.get("choices", {}).get(f"{target}/{precision}", {})

    # The explicit runs: --precision fp32/bf16 on the float file (what --model RUN
    # --precision fp32|bf16 runs too), int8 on the INT8 file (what --model RUN --precision int8 runs).
    runs = {p: choice("file" if p != "int8" else "folder", p).get("images_per_s")
            for p in ("fp32", "bf16", "int8")}
    for target, allowed in (("file", ("fp32", "bf16")), ("folder", ("fp32", "bf16", "int8"))):
        auto = choice(target, "auto")
        explicit = {p: runs[p] for p in allowed if runs[p]}
        fastest = max(explicit, key=explicit.get, default=None)
        r = auto.get("images_per_s")
        x = r / explicit[fastest] if r and fastest else None
        row(f"p2p-translate, no precision flag, {target} (ran {auto.get('ran', '?')}) vs "
            f"fastest --precision ({fastest}: {fmt(explicit.get(fastest))} images/s)",
            f"{fmt(x, '.2f')}×", "≥ 0.95×", None if x is None else x >= 0.95)
    e8 = cases.get(("engine", "openvino", "int8", 8), {})
    int8, int8_cpu = e8.get("images_per_s"), e8.get("cpu_images_per_s")
    ips = machine.get("peak_images_per_s", {})
    for key, what in (("int8_matmul", "INT8 matrix peak (oneDNN/OpenVINO MatMul)"),
                      ("int8_vnni", "VNNI instruction peak (peak.c vpdpbusd)")):
        peak = ips.get(key)
        if not peak:
            continue
        pct = [100 * r / peak if r else None for r in (int8, int8_cpu)]
        row(f"INT8 model-only batch 8 vs {what}, {peak:.1f} images/s: wall (CPU-time)",
            f"{fmt(pct[0], '.0f')}% ({fmt(pct[1], '.0f')}%)", "≥ 75%",
            None if pct[0] is None else max(p or 0 for p in pct) >= 75)
    for provider, precision, goal in (("torch-pt2e", "int8", 1.3), ("torch-compile", "fp32", 4)):
        p = cases.get(("peer", provider, precision, 8), {})
        x = [a / b if a and b else None for a, b in
             ((int8, p.get("images_per_s")), (int8_cpu, p.get("cpu_images_per_s")))]
        row(f"INT8 model-only batch 8 vs {PEER_NAMES[provider]} {precision.upper()} "
            f"({fmt(p.get('images_per_s'))} images/s): wall (CPU-time)",
            f"{fmt(x[0], '.2f')}× ({fmt(x[1], '.2f')}×)", f"≥ {goal}×",
            None if x[0] is None else x[0] >= goal)
    return rows


def layout_table(cases) -> list[str]:
    """Issue 21: OpenVINO FP32 stream/thread layouts side by side, and the engine's pick."""
    out = ["| batch | " + "layouts (images/s, best of 3 interleaved) | engine compiles | fastest |",
           "|---:|---|---|---|"]
    for b in BATCHES:
        e = cases.get(("layout", "openvino", "fp32", b))
        if e:
            lay = ", ".join(f"{k}: {v:.1f}" for k, v in e["layouts"].items())
            ok = "" if e["engine_layout"] == e["fastest_layout"] else " (**not the engine's**)"
            out.append(f"| {b} | {lay} | {e['engine_layout']} | {e['fastest_layout']}{ok} |")
    return out if len(out) > 2 else []


def choice_table(cases) -> list[str]:
    """Issue 21: what p2p-translate chose with no precision flag, and the explicit ones."""
    out = ["| model | --precision | images/s (pipeline, best of 2 interleaved rounds) | incl. "
           "start-up | ran | start-up line (file auto: its first start) |",
           "|---|---|---:|---:|---|---|"]
    e = cases.get(("translate-choice", "all", "all", 8), {})
    for key, c in e.get("choices", {}).items():
        target, precision = key.split("/")
        why = c.get("first_why", "") if precision == "auto" and target == "file" else c["why"]
        out.append(f"| {target} | {precision} | {fmt(c.get('images_per_s'))} | "
                   f"{fmt(c.get('wall_images_per_s'))} | {c.get('ran', '?')} | {why[:170]} |")
    return out if len(out) > 2 else []


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
        f"- Matrix peak (AMX/VNNI through oneDNN): BF16 {fmt(gf.get('bf16_matmul'), '.0f')} "
        f"GFLOP/s (torch {fmt(gf.get('bf16_matmul_torch'), '.0f')}, openvino "
        f"{fmt(gf.get('bf16_matmul_openvino'), '.0f')}), INT8 {fmt(gf.get('int8_matmul'), '.0f')}"
        f" GOP/s (torch _int_mm {fmt(gf.get('int8_matmul_torch'), '.0f')}, openvino "
        f"{fmt(gf.get('int8_matmul_openvino'), '.0f')})",
        f"- CPU flags: {' '.join(machine.get('flags', [])) or '?'}",
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
             *e2e_table(cases), "", "### Targets (issues 5 and 11)", *targets(cases, machine), "",
             "### Issue 21: auto, the peers, INT8 vs its matrix peak",
             "| target | measured | goal | |", "|---|---:|---|---|",
             *issue21_targets(cases, machine), "",
             "#### What p2p-translate chose (64 val images, batch 8, no --provider)",
             *choice_table(cases), "", "#### OpenVINO FP32 stream/thread layouts",
             *layout_table(cases), "",
             "### Machine", *machine_lines(machine)]
    print("\n".join(parts))


if __name__ == "__main__":
    main()
