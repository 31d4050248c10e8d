"""Engine: numbers match a numpy reference, batching is invisible, providers are honest."""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap

import numpy as np
import pytest

import onnxruntime
from blocking import run_without
from onnx_models import conv_model, identity_model, reference_conv_tanh
from p2p.runtime.engine import Engine
from p2p.runtime.errors import ModelError, ProviderError
from p2p.runtime.host import physical_cores


@pytest.fixture(scope="module")
def conv(tmp_path_factory):
    return conv_model(tmp_path_factory.mktemp("m") / "conv.onnx", image_size=16, size_multiple=16)


def batch(n, size=16, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, size, size)).astype(np.float32)


def test_cpu_matches_numpy_reference(conv, tmp_path):
    engine = Engine(conv, provider="cpu", cache_dir=tmp_path)
    assert engine.provider == "cpu"
    assert engine.metadata.image_size == 16
    x = batch(3)
    y = engine.run(x)
    assert y.dtype == np.float32 and y.shape == (3, 3, 16, 16)
    np.testing.assert_allclose(y, reference_conv_tanh(conv, x), atol=1e-5)


def test_batch_invariance_and_ragged_last_batch(conv, tmp_path):
    engine = Engine(conv, provider="cpu", batch_size=4, cache_dir=tmp_path)
    x = batch(11, seed=1)  # 4 + 4 + 3
    together = engine.run(x)
    alone = np.concatenate([engine.run(x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    # Each output belongs to its own input: shuffling the batch shuffles the outputs.
    perm = np.random.default_rng(2).permutation(len(x))
    np.testing.assert_allclose(engine.run(x[perm]), together[perm], atol=1e-6)
    assert engine.run(x[:0]).shape == (0, 3, 16, 16)


def test_fixed_batch_model_runs_in_chunks(tmp_path):
    path = identity_model(tmp_path / "b1.onnx", fixed_batch=1, image_size=16, size_multiple=16)
    engine = Engine(path, provider="cpu", batch_size=8, cache_dir=tmp_path)
    assert engine.batch_size == 1
    x = batch(5)
    np.testing.assert_array_equal(engine.run(x), x)


def test_shape_checks(conv, tmp_path):
    engine = Engine(conv, provider="cpu", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="3 channels"):
        engine.run(np.zeros((1, 1, 16, 16), np.float32))
    with pytest.raises(ValueError, match="16x16"):
        engine.run(np.zeros((1, 3, 32, 32), np.float32))
    dyn = Engine(identity_model(tmp_path / "d.onnx", dynamic_size=True), provider="cpu",
                 cache_dir=tmp_path)
    with pytest.raises(ValueError, match="multiples of 8"):
        dyn.run(np.zeros((1, 3, 20, 16), np.float32))
    x = batch(2, size=24)
    np.testing.assert_array_equal(dyn.run(x), x)


BEST_CPU = "openvino" if importlib.util.find_spec("openvino") else "cpu"


@pytest.mark.parametrize("provider, words", [
    ("cuda", ["has no CUDA", "p2p[gpu]"]),
    ("tensorrt", ["has no TensorRT", "p2p[gpu]"]),
    ("metal", ["unknown provider", "auto|cpu|cuda|tensorrt|openvino"]),
])
def test_provider_strictness(conv, provider, words):
    if provider in ("cuda", "tensorrt") and (
            {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
            & set(onnxruntime.get_available_providers())):
        pytest.skip("this onnxruntime build has GPU providers")
    with pytest.raises(ProviderError) as e:
        Engine(conv, provider=provider)
    for w in words:
        assert w in str(e.value)


def test_provider_that_does_not_load_is_an_error_not_a_cpu_run(conv, monkeypatch, tmp_path):
    # Pretend the build has CUDA and a device: the real onnxruntime then places every node
    # on the CPU (the silent fallback this engine exists to refuse), and the session's
    # session.disable_cpu_ep_fallback makes onnxruntime itself refuse it.
    from p2p.runtime import host

    real = onnxruntime.get_available_providers()
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", *real])
    monkeypatch.setattr(host, "cuda_devices", lambda: (1, ""))
    with pytest.warns(UserWarning):
        with pytest.raises(ProviderError, match="could not start CUDAExecutionProvider.*"
                                                "assigned to the default CPU EP"):
            Engine(conv, provider="cuda", cache_dir=tmp_path)
    # auto tries cuda, says why it passed over it, and runs on the CPU it reports.
    with pytest.warns(UserWarning):
        engine = Engine(conv, provider="auto", cache_dir=tmp_path)
    assert engine.provider == BEST_CPU
    assert [p for p, _ in engine.passed_over] == ["cuda"]
    assert "fallback to CPU EP has been explicitly disabled" in engine.passed_over[0][1]
    os.write(2, b"")  # stderr (fd 2) was restored after capturing onnxruntime's log


def test_openvino_missing_is_an_error_not_a_cpu_run(conv, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(ProviderError, match="openvino.*not installed.*p2p\\[openvino\\]"):
        Engine(conv, provider="openvino")


def test_auto_on_cpu_build_runs_best_cpu_provider(conv, tmp_path):
    # auto: openvino when installed (faster than onnxruntime's CPU provider here), else cpu.
    assert Engine(conv, cache_dir=tmp_path).provider == BEST_CPU
    engine = Engine(conv, provider="cpu", cache_dir=tmp_path)
    assert engine.provider == "cpu"
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)
    assert f"{physical_cores()} threads" in engine.describe()


def test_optimised_graph_cache_is_reused_and_survives_corruption(conv, tmp_path):
    x = batch(2)
    first = Engine(conv, provider="cpu", cache_dir=tmp_path)
    cached = list((tmp_path / "ort-cpu").glob("*.onnx"))
    assert len(cached) == 1 and "cached" in first.describe()
    second = Engine(conv, provider="cpu", cache_dir=tmp_path)
    np.testing.assert_allclose(second.run(x), first.run(x), atol=1e-6)
    cached[0].write_bytes(b"garbage")
    third = Engine(conv, provider="cpu", cache_dir=tmp_path)
    np.testing.assert_allclose(third.run(x), first.run(x), atol=1e-6)
    assert cached[0].stat().st_size > 100  # rebuilt
    plain = Engine(conv, provider="cpu", optimized_cache=False)
    assert "cached" not in plain.describe()


def test_model_file_errors(tmp_path):
    with pytest.raises(ModelError, match="no such model file"):
        Engine(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xfe not a protobuf at all")
    with pytest.raises(ModelError, match="not an ONNX model"):
        Engine(junk)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(conv_model(tmp_path / "whole.onnx").read_bytes()[:200])
    with pytest.raises(ModelError, match="not an ONNX model"):
        Engine(cut)
    import onnx

    bare = tmp_path / "bare.onnx"
    model = onnx.load(str(conv_model(tmp_path / "c.onnx")))
    del model.metadata_props[:]
    onnx.save(model, str(bare))
    with pytest.raises(ModelError, match="no p2p metadata"):
        Engine(bare)


def test_runtime_imports_and_runs_without_torch(tmp_path):
    model = conv_model(tmp_path / "m.onnx")
    img_dir = tmp_path / "in"
    img_dir.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 30), (10, 200, 30)).save(img_dir / "a.png")
    script = textwrap.dedent(f"""
        from pathlib import Path
        import numpy as np
        import p2p.runtime.backends.ort, p2p.runtime.gallery, p2p.runtime.images
        import p2p.cli.translate
        from p2p.runtime import Engine
        from p2p.runtime.pipeline import TranslateConfig, translate
        e = Engine({str(model)!r}, provider="cpu", cache_dir={str(tmp_path / 'c')!r})
        assert e.run(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 3, 32, 32)
        s = translate(TranslateConfig(inputs=(Path({str(img_dir)!r}),), model=Path({str(model)!r}),
                                      provider="cpu", progress=False, html=True), log=lambda m: None)
        assert len(s.translated) == 1 and not s.failed, s.lines()
        print("ok")
    """)
    out = run_without(["torch"], script, timeout=60)  # any "import torch" raises there
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert (tmp_path / "in-translated" / "a.png").is_file()


def test_a_cache_path_under_a_file_costs_only_the_cache(tmp_path, monkeypatch):
    """$P2P_CACHE pointing at a file: the CPU graph cache cannot be made there (ENOTDIR),
    which escaped the 'load plainly' fallback as a traceback in translate, serve and
    export. The model loads and runs without the cache."""
    from onnx_models import conv_model

    model = conv_model(tmp_path / "m.onnx")
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("P2P_CACHE", str(tmp_path / "afile"))
    with Engine(model, "cpu", batch_size=2) as engine:
        y = engine.run(np.zeros((2, 3, 32, 32), np.float32))
    assert y.shape == (2, 3, 32, 32) and np.isfinite(y).all()
