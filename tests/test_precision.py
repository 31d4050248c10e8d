"""The precision rule (runtime/precision.py) with faked CPU flags, its refusals, and the
choice of the fastest verified export in a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from p2p.runtime import backends, precision
from p2p.runtime.errors import ModelError, ProviderError
from p2p.runtime.precision import choose, cpu_flags, fastest_export

from onnx_models import conv_model

AMX = frozenset({"avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"})
AVX512_BF16 = frozenset({"avx512f", "avx512_vnni", "avx512_bf16"})
AVX2 = frozenset({"avx2", "fma"})


VNNI = frozenset({"avx512f", "avx512_vnni"})  # INT8 dot products, no BF16


@pytest.mark.parametrize("flags, want, race, says", [
    (AMX, "bf16", (), "AMX (amx_bf16)"),
    # AVX512_BF16 without AMX: slower than FP32 on one Xeon, faster on a Zen 4 (issue 21),
    # so FP32 unless a measurement says otherwise (the race below).
    (AVX512_BF16, "fp32", ("fp32", "bf16"), "without AMX: speed not measured"),
    (VNNI, "fp32", (), "no native BF16"), (AVX2, "fp32", (), "no native BF16")])
def test_auto_on_a_float_file_by_cpu(flags, want, race, says):
    c = choose("auto", "fp32", "openvino", flags)
    assert (c.precision, c.race) == (want, race), c
    assert c.backend == (want if want == "bf16" else None)
    assert says in c.why
    assert choose(None, "fp32", "openvino", flags) == c  # None means auto


@pytest.mark.parametrize("provider", ["cpu", "cuda", "tensorrt"])
def test_auto_off_openvino_is_fp32_and_says_why(provider):
    c = choose("auto", "fp32", provider, AMX)
    assert c.precision == "fp32" and c.backend is None
    assert f"provider {provider} has no BF16 CPU path (openvino has" in c.why


@pytest.mark.parametrize("flags", [AMX, AVX2])
def test_fp32_is_always_the_exact_path(flags):
    for provider in ("cpu", "openvino"):
        c = choose("fp32", "fp32", provider, flags)
        assert (c.precision, c.backend) == ("fp32", None)


def test_int8_file_runs_int8_under_auto_and_int8():
    for requested in ("auto", "int8"):
        assert choose(requested, "int8", "openvino", AVX2).precision == "int8"
        assert choose(requested, "int8", "openvino", AVX2).backend == "int8"
        # onnxruntime's CPU provider runs QDQ as QLinearConv: INT8, with no backend hint.
        assert (choose(requested, "int8", "cpu", AMX).precision,
                choose(requested, "int8", "cpu", AMX).backend) == ("int8", None)


@pytest.mark.parametrize("requested, model, provider, flags, error, match", [
    ("bf16", "fp32", "openvino", AVX2, ProviderError, "needs a CPU with native BF16"),
    ("bf16", "fp32", "cpu", AMX, ProviderError, "runs on openvino only"),
    ("int8", "fp32", "openvino", AMX, ModelError, "needs an INT8 file"),
    ("fp32", "int8", "openvino", AMX, ModelError, "INT8 export: it cannot run fp32"),
    ("bf16", "int8", "openvino", AMX, ModelError, "INT8 export: it cannot run bf16"),
    ("auto", "int8", "cuda", AMX, ProviderError, "export for CPUs"),
    ("int8", "int8", "tensorrt", AMX, ProviderError, "export for CPUs"),
    ("bf16", "fp16", "openvino", AMX, ModelError, "FP16 export"),
    ("fp16", "fp32", "openvino", AMX, ProviderError, "not one of"),
])
def test_refusals_never_substitute(requested, model, provider, flags, error, match):
    with pytest.raises(error, match=match):
        choose(requested, model, provider, flags)


def test_cpu_flags_from_cpuinfo(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx512_bf16 amx_int8\n")
    monkeypatch.setattr(precision.sys, "platform", "linux")
    assert cpu_flags(info) == {"fpu", "avx512_bf16", "amx_int8"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
    monkeypatch.setattr(precision.sys, "platform", "darwin")  # conservative: nothing claimed
    assert cpu_flags(info) == frozenset()


def test_check_ran_reads_what_openvino_compiled():
    int8 = precision.Choice("int8", "", "int8")
    precision.check_ran(int8, {"i8": 8, "u8": 8}, "m")
    with pytest.raises(ProviderError, match="only 8 of 16 convolutions"):
        precision.check_ran(int8, {"i8": 8, "f32": 8}, "m")
    bf16 = precision.Choice("bf16", "", "bf16")
    precision.check_ran(bf16, {"bf16": 8, "f32": 8}, "m")
    with pytest.raises(ProviderError, match="no convolution does"):
        precision.check_ran(bf16, {"f32": 16}, "m")


def _export_folder(tmp_path: Path, int8_verified: bool) -> Path:
    folder = tmp_path / "run" / "export"
    folder.mkdir(parents=True)
    conv_model(folder / "generator.onnx", verified=True)
    conv_model(folder / "generator.int8.onnx", precision="int8", verified=int8_verified)
    (folder / "notes.onnx").write_bytes(b"not a model")  # skipped: no p2p metadata
    return folder


def test_fastest_export_takes_verified_int8_where_it_runs_natively(tmp_path, monkeypatch):
    folder = _export_folder(tmp_path, int8_verified=True)
    monkeypatch.setattr(precision, "cpu_flags", lambda: AMX)
    monkeypatch.setattr(backends, "openvino_available", lambda: True)
    path, why = fastest_export(folder.parent)  # the run folder works too
    assert path.name == "generator.int8.onnx" and "INT8 dot products in hardware" in why
    assert "also there: generator.onnx" in why
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2)  # no VNNI/AMX: float first
    assert fastest_export(folder)[0].name == "generator.onnx"
    monkeypatch.setattr(precision, "cpu_flags", lambda: AMX)
    monkeypatch.setattr(backends, "openvino_available", lambda: False)
    path, why = fastest_export(folder)  # no openvino: INT8 on onnxruntime is slower
    assert path.name == "generator.onnx" and "needs openvino" in why


def test_fastest_export_passes_over_an_unverified_int8(tmp_path, monkeypatch):
    folder = _export_folder(tmp_path, int8_verified=False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: AMX)
    path, why = fastest_export(folder)
    assert path.name == "generator.onnx"
    assert "passed over (not verified): generator.int8.onnx" in why
    with pytest.raises(ModelError, match="no p2p model"):
        fastest_export(tmp_path)
    with pytest.raises(ModelError, match=r"no verified INT8 model for --precision int8 .*"
                       r"passed over \(not verified\): generator.int8.onnx"):
        fastest_export(folder, "int8")


def test_fastest_export_follows_precision_and_provider(tmp_path, monkeypatch):
    """--model RUN --precision fp32 on an AMX machine with openvino was refused ('INT8
    export: it cannot run fp32') although the run has generator.onnx; --provider cpu ran
    INT8 on onnxruntime (slower than its FP32); without openvino --precision int8 took the
    float file and refused."""
    folder = _export_folder(tmp_path, int8_verified=True)
    monkeypatch.setattr(precision, "cpu_flags", lambda: AMX)
    monkeypatch.setattr(backends, "openvino_available", lambda: True)
    for requested in ("fp32", "bf16"):
        path, why = fastest_export(folder, requested)
        assert path.name == "generator.onnx" and f"for --precision {requested}" in why
    path, why = fastest_export(folder, "auto", "cpu")
    assert path.name == "generator.onnx" and "not --provider cpu" in why
    assert fastest_export(folder, "auto", "openvino")[0].name == "generator.int8.onnx"
    monkeypatch.setattr(backends, "openvino_available", lambda: False)
    assert fastest_export(folder, "int8")[0].name == "generator.int8.onnx"
    (folder / "generator.onnx").unlink()
    with pytest.raises(ModelError, match=r"no verified FP32 model for --precision fp32 .*"
                       r"there: generator.int8.onnx"):
        fastest_export(folder, "fp32")


def test_without_openvino_a_run_folder_runs_float_and_bf16_is_one_line(tmp_path):
    """OpenVINO not importable (blocked in a child, as a broken install is): --model RUN
    takes the float export (not INT8 on onnxruntime's slower CPU path) and says why;
    --precision bf16 is refused in one line and writes nothing."""
    from PIL import Image

    from blocking import cli_without

    folder = _export_folder(tmp_path, int8_verified=True)
    Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "a.png")
    r = cli_without(["openvino"], "translate", "p2p-translate", tmp_path / "a.png",
                    "--model", folder.parent, "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "model: generator.onnx (fp32)" in r.stderr and "INT8 needs openvino" in r.stderr
    assert "on cpu" in r.stderr and "precision fp32" in r.stderr
    assert (tmp_path / "out" / "a.png").is_file()
    r = cli_without(["openvino"], "translate", "p2p-translate", tmp_path / "a.png",
                    "--model", folder.parent, "-o", tmp_path / "out-bf16", "-q",
                    "--precision", "bf16")
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "bf16 runs on openvino only" in errors[0], r.stderr
    assert "pip install 'p2p[openvino]'" in errors[0]  # absent here: the hint says how
    assert "Traceback" not in r.stderr and not (tmp_path / "out-bf16").exists()


@pytest.mark.parametrize("verified", [True, False])
def test_an_unverified_int8_file_given_by_path_says_so(tmp_path, verified):
    """--model FILE.int8.onnx exported with --no-verify runs (the user chose it), and the
    start-up reason says it was not checked; a verified one does not say so."""
    from p2p.runtime.engine import Engine

    path = conv_model(tmp_path / "g.int8.onnx", precision="int8", verified=verified)
    with Engine(path, provider="cpu") as engine:
        assert engine.precision == "int8"
        assert ("NOT verified" in engine.choice.why) is not verified


def test_an_fp16_file_on_a_cpu_does_not_claim_fp16_arithmetic():
    for provider in ("cpu", "openvino"):
        c = choose("auto", "fp16", provider, AMX)
        assert c.precision == "fp16" and "FP32 arithmetic" in c.why
    assert "arithmetic" not in choose("auto", "fp16", "tensorrt", AMX).why


# --- auto by measurement (p2p.runtime.measure) on a real OpenVINO, with faked flags --------

def _openvino_bf16() -> bool:
    ov = pytest.importorskip("openvino")
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _fake_speeds(monkeypatch, table, calls):
    from p2p.runtime import measure

    def fake(built, x, rounds=3):
        calls.append((sorted(built), x.shape))
        assert all(b.provider == "openvino" for b in built.values())
        return {p: table[p] for p in built}
    monkeypatch.setattr(measure, "speeds", fake)


@pytest.mark.parametrize("table, want", [({"fp32": 10.0, "bf16": 5.0}, "fp32"),
                                         ({"fp32": 10.0, "bf16": 10.4}, "fp32"),  # in noise
                                         ({"fp32": 5.0, "bf16": 10.0}, "bf16")])
def test_avx512_bf16_without_amx_measures_once_and_caches(tmp_path, monkeypatch, table, want):
    """The first start on such a CPU times FP32 and BF16 and runs the faster (FP32 within
    5%); the answer is cached: the next start measures nothing and says it was measured."""
    if not _openvino_bf16():
        pytest.skip("OpenVINO finds no BF16 unit on this CPU: bf16 cannot be built")
    from p2p.runtime.engine import Engine

    model = conv_model(tmp_path / "g.onnx", verified=True)
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX512_BF16)
    calls = []
    _fake_speeds(monkeypatch, table, calls)
    with Engine(model, "openvino", batch_size=4, cache_dir=tmp_path / "cache") as engine:
        assert engine.precision == want and len(calls) == 1
        assert calls[0][0] == ["bf16", "fp32"] and calls[0][1][0] >= 1
        assert f"bf16 {table['bf16']:.1f}" in engine.choice.why
        assert f"fp32 {table['fp32']:.1f}" in engine.choice.why
        assert "measured now" in engine.choice.why
        assert want in engine.describe()  # the compiled model kept is the winner's
        y = engine.run(np.zeros((2, 3, 32, 32), np.float32))
        assert y.shape == (2, 3, 32, 32) and np.isfinite(y).all()
    cached = list((tmp_path / "cache" / "precision").glob("*.json"))
    assert len(cached) == 1
    with Engine(model, "openvino", cache_dir=tmp_path / "cache") as engine:
        assert engine.precision == want and len(calls) == 1  # no second measurement
        assert ", cached)" in engine.choice.why
    cached[0].write_text("{not json")  # a torn or foreign cache file: measured again
    with Engine(model, "openvino", cache_dir=tmp_path / "cache") as engine:
        assert engine.precision == want and len(calls) == 2
    other = conv_model(tmp_path / "h.onnx", seed=1, verified=True)  # another model: its own
    Engine(other, "openvino", cache_dir=tmp_path / "cache").close()
    assert len(calls) == 3


@pytest.mark.parametrize("flags, want", [(AMX, "bf16"), (VNNI, "fp32"), (AVX2, "fp32")])
def test_known_cpus_measure_nothing(tmp_path, monkeypatch, flags, want):
    if want == "bf16" and not _openvino_bf16():
        pytest.skip("OpenVINO finds no BF16 unit on this CPU")
    from p2p.runtime.engine import Engine

    model = conv_model(tmp_path / "g.onnx", verified=True)
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    calls = []
    _fake_speeds(monkeypatch, {}, calls)
    with Engine(model, "openvino", cache_dir=tmp_path / "cache") as engine:
        assert engine.precision == want and calls == []
    assert not (tmp_path / "cache" / "precision").exists()


def test_the_measurement_itself_times_every_backend(tmp_path):
    """measure.speeds on real sessions: a 4x deeper model measures slower, every rate > 0."""
    from p2p.runtime import measure
    from p2p.runtime.engine import Engine

    from onnx_models import slow_model

    fast = Engine(conv_model(tmp_path / "f.onnx"), "cpu")
    slow = Engine(slow_model(tmp_path / "s.onnx", depth=16, width=32), "cpu")
    x = np.zeros((2, 3, 32, 32), np.float32)
    got = measure.speeds({"fast": fast, "slow": slow}, x, rounds=2)
    assert got["fast"] > got["slow"] > 0
    assert measure.pick({"fp32": 10.0, "bf16": 10.4}) == "fp32"
    assert measure.pick({"fp32": 10.0, "bf16": 10.6}) == "bf16"
    assert measure.pick({"fp32": 10.0, "bf16": 3.0}) == "fp32"


@pytest.mark.parametrize("flags, want", [(AMX, "generator.int8.onnx"),
                                         (AVX512_BF16, "generator.int8.onnx"),
                                         (VNNI, "generator.int8.onnx"),
                                         (AVX2, "generator.onnx")])
def test_fastest_export_by_cpu(tmp_path, monkeypatch, flags, want):
    """INT8 first wherever INT8 dot products are in hardware (VNNI or AMX), float elsewhere."""
    folder = _export_folder(tmp_path, int8_verified=True)
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    monkeypatch.setattr(backends, "openvino_available", lambda: True)
    path, why = fastest_export(folder)
    assert path.name == want, why
    if want.endswith("int8.onnx"):
        assert "INT8 dot products in hardware (" in why


@pytest.mark.parametrize("loads", [True, False])
def test_auto_off_openvino_names_openvino_as_it_stands_here(monkeypatch, loads):
    """--provider cpu on a BF16 CPU: where OpenVINO loads, the line says --provider openvino
    (no install hint); where it does not, how to install it."""
    monkeypatch.setattr(backends, "openvino_available", lambda: loads)
    why = choose("auto", "fp32", "cpu", AVX512_BF16).why
    assert ("--provider openvino" in why) and (("pip install" in why) != loads), why


@pytest.mark.parametrize("table, first, says", [
    ({"fp32": 1335.6, "bf16": 1369.3}, "fp32",
     "auto: measured bf16 1369.3 vs fp32 1335.6 images/s, under the 1.05x a reduced "
     "precision must gain over fp32 to be used"),
    ({"fp32": 10.0, "bf16": 5.0}, "fp32", "auto: fp32 is the fastest here by measurement, "
     "fp32 10.0 vs bf16 5.0 images/s"),
    ({"fp32": 5.0, "bf16": 10.0}, "bf16", "auto: bf16 is the fastest here by measurement, "
     "bf16 10.0 vs fp32 5.0 images/s")])
def test_the_measured_line_says_what_was_measured(table, first, says):
    from p2p.runtime import measure

    won = measure.pick(table)
    line = measure._line({"precision": won, "images_per_s": table}, cached=False)
    assert won == first and line.startswith(says), line
    assert "fastest" not in line or max(table, key=table.get) == won


def test_an_older_checkpoints_exports_are_never_the_newer_ones_stand_in(tmp_path, monkeypatch):
    """--fp16 --int8 at step 40, train on, then an FP32-only export at step 120: the old
    INT8 file was served for the run as 'known to beat FP32' (25 dB from the new model),
    exit 0. Exports of another checkpoint than the float export's are passed over, named."""
    folder = tmp_path / "run" / "export"
    folder.mkdir(parents=True)
    conv_model(folder / "generator.int8.onnx", precision="int8", verified=True,
               checkpoint_sha256="a" * 64, training_step=40)
    conv_model(folder / "generator.onnx", verified=True, checkpoint_sha256="b" * 64,
               training_step=120)
    monkeypatch.setattr(precision, "cpu_flags", lambda: AMX)
    monkeypatch.setattr(backends, "openvino_available", lambda: True)
    path, why = fastest_export(folder.parent)
    assert path.name == "generator.onnx"
    assert ("passed over (made from another checkpoint than generator.onnx, step 120; an "
            "older export of this run is refreshed by exporting again): generator.int8.onnx "
            "(step 40)") in why
    with pytest.raises(ModelError, match=r"no verified INT8 model .*generator.int8.onnx "
                                         r"\(step 40\)"):
        fastest_export(folder, "int8")
    conv_model(folder / "generator.int8.onnx", precision="int8", verified=True,
               checkpoint_sha256="b" * 64, training_step=120)  # re-exported: taken again
    assert fastest_export(folder)[0].name == "generator.int8.onnx"
    # A model of another run copied in (newer on disk) never takes the run over.
    conv_model(folder / "downloaded.onnx", verified=True, checkpoint_sha256="c" * 64)
    path, why = fastest_export(folder)
    assert path.name == "generator.int8.onnx" and "downloaded.onnx (step 0)" in why


@pytest.mark.parametrize("entry", [
    {"measured": 0}, {"images_per_s": {"fp32": "1906.8", "bf16": 2000.0}},
    {"images_per_s": {"fp32": 10.0, "bf16": 20.0, "int8": None}},
    {"images_per_s": {"fp32": float("inf"), "bf16": 20.0}},
    {"images_per_s": {"fp32": True, "bf16": 20.0}}, {"precision": ["bf16"]}, [1, 2]])
def test_a_damaged_precision_cache_entry_is_measured_again(tmp_path, entry):
    import json

    from p2p.runtime.measure import read_cached

    good = {"precision": "bf16", "images_per_s": {"fp32": 10.0, "bf16": 20.0},
            "measured": "2026-12-07T10:00:00+00:00"}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(good))
    assert read_cached(path, ("bf16", "fp32")) == good
    path.write_text(json.dumps({**good, **entry} if isinstance(entry, dict) else entry))
    assert read_cached(path, ("bf16", "fp32")) is None


def test_an_unwritable_precision_cache_is_not_said_to_be_cached():
    from p2p.runtime.measure import _line

    data = {"precision": "bf16", "images_per_s": {"fp32": 10.0, "bf16": 20.0}}
    assert "cached for the next start" in _line(data, cached=False)
    line = _line(data, cached=False, stored=False)
    assert "cached for" not in line and "cannot be written, so every start measures" in line
