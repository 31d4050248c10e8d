"""The precision rule (runtime/precision.py) with faked CPU flags, its refusals, and the
choice of the fastest verified export in a folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2p.runtime import backends, precision
from p2p.runtime.errors import ModelError, ProviderError
from p2p.runtime.precision import choose, cpu_flags, fastest_export

from onnx_models import conv_model

AMX = frozenset({"avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"})
AVX512_BF16 = frozenset({"avx512f", "avx512_vnni", "avx512_bf16"})
AVX2 = frozenset({"avx2", "fma"})


@pytest.mark.parametrize("flags, want, flag", [
    (AMX, "bf16", "amx_bf16"), (AVX512_BF16, "bf16", "avx512_bf16"), (AVX2, "fp32", None)])
def test_auto_on_a_float_file_takes_native_bf16_on_openvino(flags, want, flag):
    c = choose("auto", "fp32", "openvino", flags)
    assert c.precision == want and c.backend == (want if want == "bf16" else None)
    assert (flag in c.why) if flag else "no native BF16" in c.why
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
    assert path.name == "generator.int8.onnx" and "INT8 runs natively" in why
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
