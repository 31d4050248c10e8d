"""Which arithmetic a model runs in: the one rule behind ``--precision auto|fp32|bf16|int8``.

    choice = choose("auto", model_precision="fp32", provider="openvino", flags=cpu_flags())
    choice.precision   # "bf16": what runs
    choice.why         # "auto: the CPU has AMX (amx_bf16), BF16 matrix units known to ..."
    choice.backend     # what EngineOptions.precision gets: "bf16", "int8" (openvino), or None

The rule (issue 11; speeds in BENCHMARKS.md):
- an INT8 file (``p2p-export --int8``, verified >= 40 dB) runs INT8: its convolutions are
  INT8 in the file, the rest (normalisation, activations, tanh) runs in float32. ``auto`` and
  ``int8`` take it; ``fp32`` and ``bf16`` are errors (the float export is the exact path);
- a float32 file under ``auto`` on OpenVINO (the one backend with a BF16 CPU path) runs
  BF16 where the CPU has AMX (BF16 matrix units, known faster than FP32); where it has
  AVX512_BF16 without AMX the speed is not known from the flags (slower than FP32 on one
  Xeon, 2x faster on a Zen 4, issue 21), so the first start measures both and keeps the
  faster, cached per model/CPU/library (``p2p.runtime.measure``); FP32 everywhere else
  (flags read from /proc/cpuinfo; elsewhere, e.g. macOS, we do not guess). ``fp32`` is
  always the exact path; ``bf16`` without native BF16 or off OpenVINO is an error; ``int8``
  on a float file is an error (export one with --int8);
- an FP16 file runs as FP16 (GPU) or FP16 weights in FP32 arithmetic (CPU); only ``auto``
  takes it.
A precision the hardware or backend cannot run is an error, never a substitute.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError, ProviderError, choices

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # native BF16 matrix/dot-product instructions
INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")  # native INT8 dot products


@dataclass(frozen=True)
class Precision:
    """Everything p2p knows about one precision, in one entry (issue 21). Adding one is a new
    entry here plus, where its file is new, its writer in ``p2p.export`` (docs/architecture.md,
    "Adding a precision"): export file names, verification bounds, the ``--precision``
    choices, the rule below, OpenVINO's hint and the bench's PSNR bound all read this."""

    name: str  # --precision value; what Engine.precision reports
    file: str  # the model file's metadata precision it runs ("fp32" for bf16: a float file)
    suffix: str  # p2p-export writes generator<suffix>.onnx
    openvino: str | None  # OpenVINO INFERENCE_PRECISION_HINT; None: no openvino CPU path
    native: tuple[str, ...]  # CPU flags with its instructions (any one); () = every CPU
    known_fast: tuple[str, ...]  # flags that make it known faster than FP32 (any one)
    min_psnr_db: float | None  # dB against FP32 (export verification, bench); None: exact
    invariance: float  # max |image alone - same image in a batch| at export
    rank: int  # run-folder order under auto, lower first (where it runs natively)
    requestable: bool = True  # a --precision choice (fp16 is a file, chosen by auto only)


REGISTRY: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", "fp32", "", "f32", (), (), None, 1e-5, 1),
    # bf16 runs the float file; AMX is known faster, AVX512_BF16 alone is measured (measure.py)
    Precision("bf16", "fp32", "", "bf16", BF16_FLAGS, ("amx_bf16",), 45.0, 1e-5, 1),
    # int8: NNCF's QDQ file; OpenVINO runs its convolutions INT8 under the f32 hint (the rest
    # is float32); activation scales are fixed, so an image cannot depend on its batch beyond
    # one INT8 step from float rounding before a QuantizeLinear.
    Precision("int8", "int8", ".int8", "f32", INT8_FLAGS, INT8_FLAGS, 40.0, 2e-2, 0),
    # fp16: a GPU file; on a CPU its weights run in FP32 arithmetic
    Precision("fp16", "fp16", ".fp16", None, (), (), 40.0, 2e-3, 3, requestable=False),
)}
PRECISIONS = ("auto",) + tuple(n for n, p in REGISTRY.items() if p.requestable)


def export_path(output: Path, precision: str) -> Path:
    """Where p2p-export writes the ``precision`` file beside ``output`` (generator.onnx)."""
    return output.with_name(output.stem + REGISTRY[precision].suffix + output.suffix)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo; empty where there is none (not Linux), which
    makes every rule below take the conservative branch (no native BF16 claimed)."""
    if not sys.platform.startswith("linux"):
        return frozenset()
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native(flags: frozenset[str], wanted: tuple[str, ...]) -> str | None:
    """The first of ``wanted`` the CPU has, or None."""
    return next((f for f in wanted if f in flags), None)


@dataclass(frozen=True)
class Choice:
    precision: str  # what runs: "fp32" | "bf16" | "int8" | "fp16"
    why: str  # one line for the start-up log
    backend: str | None  # EngineOptions.precision: "bf16", "int8" (openvino) or None (fp32)
    # auto where the flags do not settle speed: the precisions to measure the first time
    # (p2p.runtime.measure); ``precision`` is then FP32, what runs if nothing is measured.
    race: tuple[str, ...] = ()


def choose(requested: str | None, model_precision: str, provider: str,
           flags: frozenset[str], model: str = "the model", output_depth: str = "uint8"
           ) -> Choice:
    """The precision ``provider`` runs ``model`` (a ``model_precision`` file) in.

    requested: "auto" (None means auto), "fp32", "bf16" or "int8"; model_precision: the
    file's metadata precision ("fp32", "fp16" or "int8"); provider: the backend's name
    ("cpu", "cuda", "tensorrt", "openvino"); flags: ``cpu_flags()``; output_depth: the
    model's metadata output_depth (auto keeps FP32 for deeper than 8-bit outputs).
    Raises ProviderError for a precision this provider/CPU cannot run, ModelError for one
    this file cannot be run in; never returns a different precision than a non-auto request.
    """
    requested = requested or "auto"
    if requested not in PRECISIONS:
        raise ProviderError(f"precision {requested!r} is not one of {choices(PRECISIONS)}")
    if model_precision == "int8":
        if provider in ("cuda", "tensorrt"):
            # CUDA EP runs QDQ as float Conv between (de)quantize ops; TensorRT takes only
            # signed symmetric INT8 Q/DQ, and NNCF's CPU recipe writes unsigned activations
            # after ReLU, which onnxruntime would hand back to CUDA in float. Unverified on
            # GPUs, so refused rather than reported as INT8.
            raise ProviderError(f"provider {provider}: {model} is an INT8 (QDQ) export for "
                                "CPUs (openvino, onnxruntime cpu); on a GPU use the float or "
                                "FP16 export")
        if requested in ("auto", "int8"):
            slow = ("; onnxruntime's CPU INT8 measured slower than its FP32 on a 2-core AMX "
                    "Xeon (pip install 'p2p[openvino]' or use generator.onnx)"
                    if provider == "cpu" else "")
            return Choice("int8", f"{requested}: {model} is an INT8 export (NNCF post-"
                          "training quantization); normalisation runs in float32" + slow,
                          "int8" if provider == "openvino" else None)
        raise ModelError(f"{model} is an INT8 export: it cannot run {requested}; use the float "
                         "export (generator.onnx) for --precision " + requested)
    if model_precision == "fp16":
        if requested == "auto":
            # On a CPU the arithmetic is float32 (OpenVINO runs the f32 hint on the widened
            # weights; onnxruntime casts around the ops it has no FP16 CPU kernel for): the
            # line must not suggest FP16 arithmetic ran there.
            cpu = ("; on a CPU its FP16 weights run in FP32 arithmetic (generator.onnx is the "
                   "exact float path)" if provider in ("cpu", "openvino") else "")
            return Choice("fp16", f"auto: {model} is an FP16 export" + cpu, None)
        raise ModelError(f"{model} is an FP16 export: it cannot run {requested}; use the float "
                         "export (generator.onnx), or --precision auto")
    if requested == "int8":
        raise ModelError(f"{model} is a float export: --precision int8 needs an INT8 file "
                         "(p2p-export RUN --int8 writes generator.int8.onnx)")
    if requested == "fp32":
        return Choice("fp32", "asked for with --precision fp32 (the exact path)", None)
    bf16 = native(flags, REGISTRY["bf16"].native)
    if requested == "bf16":
        if provider != "openvino":
            from .backends import openvino_available  # the install hint only where needed

            hint = ("--provider openvino" if openvino_available()
                    else "pip install 'p2p[openvino]', --provider openvino")
            raise ProviderError(f"provider {provider}: precision bf16 runs on openvino only "
                                f"({hint})")
        if bf16 is None:
            raise ProviderError("precision bf16 needs a CPU with native BF16 (AMX or "
                                "AVX512_BF16); this one has neither; use fp32")
        return Choice("bf16", f"asked for with --precision bf16; the CPU has native BF16 ({bf16})", "bf16")
    if provider == "openvino" and bf16 is not None and output_depth != "uint8":
        # BF16 keeps 8 significant bits: a [-1, 1] output near 1 moves in steps of 1/256,
        # 128 levels of a 16-bit image; the model's depth would be written but not computed.
        return Choice("fp32", f"auto: the model writes {output_depth} images, finer than "
                      "BF16's 8-bit mantissa resolves (--precision bf16 to run it anyway)", None)
    if provider == "openvino" and native(flags, REGISTRY["bf16"].known_fast):
        # AMX tiles: BF16 matrices at several times the FP32 rate (1.5-2x end to end on a
        # 2-core Sapphire Rapids, BENCHMARKS.md); known fast, nothing to measure.
        return Choice("bf16", "auto: the CPU has AMX (amx_bf16), BF16 matrix units "
                      "known to beat FP32 (--precision fp32 for the exact path)", "bf16")
    if provider == "openvino" and bf16 is not None:
        # AVX512_BF16 dot products only: slower than FP32 on one Xeon, 2x faster on a Zen 4
        # (issue 21). Measured the first time, then cached: p2p.runtime.measure.
        return Choice("fp32", f"auto: native BF16 ({bf16}) without AMX: speed not measured, "
                      "FP32 runs", None, race=("fp32", "bf16"))
    if bf16 is None:
        return Choice("fp32", "auto: no native BF16 on this CPU", None)
    from .backends import openvino_available  # the install hint only where it is missing

    hint = ("--provider openvino to use it" if openvino_available()
            else "pip install 'p2p[openvino]', --provider openvino")
    return Choice("fp32", f"auto: provider {provider} has no BF16 CPU path (openvino has: "
                  f"{hint})", None)


def runtime_precisions(compiled) -> dict[str, int]:
    """What OpenVINO really runs: {runtime precision: number of convolution layers} of a
    compiled model (its runtime graph's ``runtimePrecision``; INT8 layers say i8 or u8)."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in ("Convolution", "Deconvolution"):
            p = info["runtimePrecision"].astype(str)
            counts[p] = counts.get(p, 0) + 1
    return counts


def check_backend(choice: Choice, backend, model: str) -> None:
    """After an engine's backend is built: what OpenVINO compiled must be what was chosen
    (onnxruntime's CPU provider runs exactly the file's arithmetic, nothing to read back)."""
    compiled = getattr(backend, "compiled", None)
    if backend.provider == "openvino" and compiled is not None:
        check_ran(choice, runtime_precisions(compiled), model)


def check_ran(choice: Choice, counts: dict[str, int], model: str) -> None:
    """ProviderError unless OpenVINO's compiled convolutions run ``choice.precision``: every
    one INT8 for an INT8 file, at least one BF16 for bf16 (the plain up-convolutions may stay
    float32 where OpenVINO has no BF16 kernel for them)."""
    int8 = counts.get("i8", 0) + counts.get("u8", 0)
    total = sum(counts.values())
    if choice.precision == "int8" and int8 != total:
        raise ProviderError(f"provider openvino: {model} should run INT8 but only {int8} of "
                            f"{total} convolutions do ({counts})")
    if choice.precision == "bf16" and not counts.get("bf16"):
        raise ProviderError(f"provider openvino: {model} should run BF16 but no convolution "
                            f"does ({counts})")


def model_rank(model_precision: str, provider_has_int8: bool, flags: frozenset[str]) -> int:
    """Lower is faster on this machine: used to pick among the exports of one run
    (generator.int8.onnx, generator.onnx, generator.fp16.onnx), from ``REGISTRY``'s ranks.
    A precision whose speed needs its instructions (INT8: VNNI or AMX; without them it is
    not known to beat FP32, issue 11) ranks first only where the CPU has them and OpenVINO
    runs it; else after FP32. FP16 last (a GPU format: on a CPU it runs FP32 arithmetic)."""
    p = REGISTRY[model_precision]
    if p.known_fast and not (provider_has_int8 and native(flags, p.known_fast)):
        return 2
    return p.rank

def open_backend(engine, provider: str, requested: str | None):
    """``Engine``'s one call into this module: choose, build the backend with that choice,
    check what it compiled. Returns (backend, Choice); raises as ``choose`` does."""
    import dataclasses

    from . import backends

    choice = choose(requested, engine.metadata.model_precision, provider, cpu_flags(),
                    engine.path.name, engine.metadata.output_depth)
    if choice.precision == "int8" and not engine.metadata.verified:
        # A file given by path runs (the user chose it), but the start-up line must not
        # suggest the >= 40 dB check happened (run folders pass such files over).
        choice = dataclasses.replace(choice, why=choice.why + "; NOT verified against FP32 "
                                     "(exported with --no-verify)")

    def build(backend_precision: str | None):
        options = dataclasses.replace(engine.options, precision=backend_precision)
        return backends.create(provider, engine.model_file, options)

    if choice.race:  # the flags do not settle it: measured once per model/CPU/library
        from .measure import race

        backend, won, why = race(engine, provider, choice, build)
        # EngineOptions.precision for the winner: None is FP32.
        choice = Choice(won, why, None if won == "fp32" else won)
    else:
        backend = build(choice.backend)
    try:
        check_backend(choice, backend, engine.path.name)
    except ProviderError:
        backend.close()
        raise
    return backend, choice


def _current_checkpoint(metas: dict) -> tuple[str, str, int] | None:
    """(checkpoint SHA-256, file name, training step) of the folder's float export, which
    every p2p-export writes: the checkpoint its other exports must come from. The one by the
    default name (``EXPORT_NAME``) where it is there, so a model copied in beside it never
    takes the run over; else the newest float export. None when there is no float export
    with a recorded checkpoint."""
    from .modelfile import EXPORT_NAME

    floats = [(p, m) for p, m in metas.items()
              if m.model_precision == "fp32" and m.checkpoint_sha256]
    if not floats:
        return None
    path, meta = max(floats, key=lambda pm: (pm[0].name == EXPORT_NAME,
                                             pm[0].stat().st_mtime_ns))
    return meta.checkpoint_sha256, path.name, meta.training_step


def fastest_export(folder: Path, requested: str | None = "auto", provider: str = "auto"
                   ) -> tuple[Path, str]:
    """The fastest verified model among the exports in ``folder`` (a run folder's
    ``export/``, or the export folder itself) that can run ``requested`` (``--precision``)
    on ``provider`` (``--provider``), and one line that says why.

    ``fp32`` and ``bf16`` take the float export, ``int8`` a verified INT8 one, ``auto`` the
    best by ``model_rank``: INT8 only where OpenVINO loads, the provider is auto or openvino
    and the CPU has VNNI/AMX (onnxruntime's CPU INT8 is slower than its FP32, and GPUs refuse
    the file). An INT8 file is only taken when p2p-export verified it (its metadata says so),
    a float one either way (FP32 is exact by construction). Files without p2p metadata are
    not models of ours and are skipped. ModelError when none fits.
    """
    from .backends import openvino_available
    from .modelfile import read_exports

    requested = requested or "auto"
    folder = Path(folder)
    where = folder / "export" if (folder / "export").is_dir() else folder
    flags = cpu_flags()
    has_openvino = provider in ("auto", "openvino") and openvino_available()
    every = tuple(dict.fromkeys(p.file for p in REGISTRY.values()))
    wanted = (REGISTRY[requested].file,) if requested in REGISTRY else every
    found, unverified, unfit, stale = [], [], [], []
    metas = read_exports(where)
    current = _current_checkpoint(metas)
    for path, meta in metas.items():
        if current and meta.checkpoint_sha256 and meta.checkpoint_sha256 != current[0]:
            stale.append(f"{path.name} (step {meta.training_step})")
            continue  # an older export beside a newer one: never the newer model's stand-in
        if meta.model_precision not in wanted:
            unfit.append(path.name)
            continue
        if meta.model_precision == "int8" and not meta.verified:
            unverified.append(path.name)
            continue
        found.append((model_rank(meta.model_precision, has_openvino, flags), path.name, path,
                      meta.model_precision))
    skipped = (f"; passed over (not verified): {', '.join(unverified)}" if unverified else "")
    if stale:
        skipped += (f"; passed over (made from another checkpoint than {current[1]}, step "
                    f"{current[2]}; an older export of this run is refreshed by exporting "
                    f"again): {', '.join(stale)}")
    if not found:
        what = ("p2p model (*.onnx with p2p metadata)" if requested == "auto" else
                f"verified {'/'.join(wanted).upper()} model for --precision {requested}")
        there = f" (there: {', '.join(unfit)})" if unfit else ""
        raise ModelError(f"{folder}: no {what} in {where}{there}{skipped}; export "
                         "one with p2p-export" + (" --int8" if requested == "int8" else ""))
    rank, _, path, precision = min(found)
    others = ", ".join([name for _, name, p, _ in sorted(found) if p != path] + unfit)
    if requested != "auto":
        why = f"the {precision.upper()} export, for --precision {requested}"
    elif rank == 1 and not has_openvino:
        why = "the float export (INT8 needs openvino" + (
            ", which does not load here)" if provider in ("auto", "openvino") else
            f", not --provider {provider})")
    else:
        why = {0: "INT8 dot products in hardware ("
                  f"{native(flags, REGISTRY[precision].known_fast)}) on openvino, known to "
                  "beat FP32 and BF16",
               1: "the float export",
               2: "the float export (INT8 is not known to be faster on this CPU or backend)",
               3: "the only export"}[rank]
    return path, (f"model: {path.name} ({precision}) from {where}: {why}"
                  + (f"; also there: {others}" if others else "") + skipped)
