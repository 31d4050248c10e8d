"""GPU providers at the library boundary, on a CPU machine: onnxruntime's InferenceSession
and provider list are replaced by recording fakes, so what p2p hands onnxruntime (option
values, provider lists, session config) and what it makes of onnxruntime's answers (errors,
printed fallback banners, a provider missing from get_providers()) are checked exactly."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import numpy as np
import onnxruntime
import pytest

from onnx_models import conv_model
from p2p.runtime import host
from p2p.runtime.backends import ort as ort_backend
from p2p.runtime.engine import Engine
from p2p.runtime.errors import ProviderError

BEST_CPU = "openvino" if importlib.util.find_spec("openvino") else "cpu"
GPU_EPS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
# The TensorRT EP boolean keys p2p sets, and the only values onnxruntime's Python binding
# accepts for them: onnxruntime/python/onnxruntime_pybind_state.cc, TensorRT branch of the
# provider-option parsing ('The value for the key 'trt_fp16_enable' should be 'True' or
# 'False''). "1"/"0" make InferenceSession print that error and retry on CUDA.
TRT_BOOLEAN_KEYS = {"trt_fp16_enable", "trt_engine_cache_enable", "trt_timing_cache_enable"}
BINDING_BOOLEANS = {"True", "true", "False", "false"}


@pytest.fixture
def conv(tmp_path):
    return conv_model(tmp_path / "conv.onnx")


class FakeInput:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


class FakeOrt:
    """Records every InferenceSession; ``behave(providers)`` says what the fake does."""

    def __init__(self, monkeypatch, behave, eps=GPU_EPS, devices=1, cuda_version="13.0"):
        self.calls, self.events = [], []
        real_session = onnxruntime.InferenceSession
        fake = self

        class Session:
            def __init__(self, path, so=None, providers=None, **kwargs):
                names = [p[0] if isinstance(p, tuple) else p for p in providers or []]
                fake.calls.append({"providers": providers, "so": so, "kwargs": kwargs})
                fake.events.append("session")
                if names == ["CPUExecutionProvider"]:  # the CPU path: the real thing
                    self._real = real_session(path, so, providers=providers)
                    return
                self._real = None
                self._providers = behave(names)

            def get_providers(self):
                return self._real.get_providers() if self._real else self._providers

            def get_inputs(self):
                return self._real.get_inputs() if self._real else [
                    FakeInput("input", ["N", 3, 32, 32])]

            def __getattr__(self, name):
                return getattr(self._real, name)

        monkeypatch.setattr(onnxruntime, "InferenceSession", Session)
        monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(eps))
        monkeypatch.setattr(onnxruntime, "preload_dlls",
                            lambda *a, **k: self.events.append("preload"), raising=False)
        monkeypatch.setattr(host, "cuda_devices",
                            lambda: (devices, "" if devices else
                                     "no NVIDIA driver (libcuda.so.1 not found)"))
        monkeypatch.setattr(ort_backend, "tensorrt_version",
                            lambda: self.events.append("import tensorrt") or "10.9.0")
        info = importlib.import_module("onnxruntime.capi.build_and_package_info")
        monkeypatch.setattr(info, "cuda_version", cuda_version, raising=False)

    def gpu_calls(self):
        return [c for c in self.calls if c["providers"] != ["CPUExecutionProvider"]]


def test_tensorrt_options_are_in_the_bindings_vocabulary(conv, monkeypatch, tmp_path):
    fake = FakeOrt(monkeypatch, lambda names: names)
    engine = Engine(conv, provider="tensorrt", cache_dir=tmp_path / "cache", batch_size=4)
    assert engine.provider == "tensorrt"
    (call,) = fake.gpu_calls()
    (trt_name, trt), (cuda_name, cuda) = call["providers"]
    assert (trt_name, cuda_name) == ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    assert TRT_BOOLEAN_KEYS <= set(trt)
    for key in TRT_BOOLEAN_KEYS:
        assert trt[key] in BINDING_BOOLEANS, (key, trt[key])
    assert (trt["trt_fp16_enable"], trt["trt_engine_cache_enable"]) == ("True", "True")
    assert all(isinstance(v, str) for v in (*trt.values(), *cuda.values()))
    # Profile: batch 1..4 at the model's fixed 32x32.
    assert trt["trt_profile_min_shapes"] == "input:1x3x32x32"
    assert trt["trt_profile_max_shapes"] == "input:4x3x32x32"
    # Strict placement: no CPU provider listed (onnxruntime refuses it beside the setting),
    # the session config set, and no quiet Python-level retry on other providers.
    so = call["so"]
    assert so.get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
    assert call["kwargs"].get("enable_fallback") == 0
    assert so.log_severity_level <= 2  # onnxruntime's partial-placement warning is kept
    # CUDA is loaded before TensorRT's libraries are imported.
    assert fake.events[:3] == ["preload", "import tensorrt", "session"]
    # The session started, so its engine cache folder exists.
    assert engine._backend.trt_cache.is_dir()
    assert engine.describe().startswith("tensorrt (device 0, fp16")


def test_cuda_session_lists_no_cpu_provider(conv, monkeypatch, tmp_path):
    fake = FakeOrt(monkeypatch, lambda names: names)
    Engine(conv, provider="cuda", cache_dir=tmp_path)
    (call,) = fake.gpu_calls()
    assert [p[0] for p in call["providers"]] == ["CUDAExecutionProvider"]
    assert call["providers"][0][1]["use_tf32"] == "0"  # "cuda" is FP32, not TF32
    assert call["so"].get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
    assert not (tmp_path / "tensorrt").exists()


def test_auto_without_a_cuda_device_takes_the_cpu_path_in_one_line(conv, monkeypatch,
                                                                  tmp_path, capfd):
    fake = FakeOrt(monkeypatch, lambda names: pytest.fail("a GPU session was tried"),
                   devices=0)
    engine = Engine(conv, provider="auto", cache_dir=tmp_path / "cache")
    assert engine.provider == BEST_CPU
    assert fake.gpu_calls() == [] and "preload" not in fake.events
    assert engine.passed_over == [("tensorrt, cuda", "no CUDA device here: no NVIDIA driver "
                                                     "(libcuda.so.1 not found)")]
    assert not (tmp_path / "cache" / "tensorrt").exists()
    out = capfd.readouterr()
    assert out.out == "" and out.err == ""


def test_translate_says_once_why_the_gpu_was_passed_over(conv, monkeypatch, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from p2p.cli.translate import main

    FakeOrt(monkeypatch, lambda names: pytest.fail("a GPU session was tried"), devices=0)
    monkeypatch.setenv("P2P_CACHE", str(tmp_path / "cache"))
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "a.png")
    r = CliRunner().invoke(main, [str(tmp_path / "a.png"), "--model", str(conv),
                                  "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    skipped = [line for line in r.output.splitlines() if line.startswith("auto:")]
    assert skipped == ["auto: skipped tensorrt, cuda: no CUDA device here: no NVIDIA driver "
                       "(libcuda.so.1 not found)"]
    assert (tmp_path / "out" / "a.png").is_file()
    assert not (tmp_path / "cache" / "tensorrt").exists()


def noisy_failure(names):
    """What onnxruntime-gpu does when TensorRT's libraries are missing and fallback is off:
    its logger writes to fd 2, Python code prints, then it raises."""
    print("*************** EP Error ***************")
    os.write(2, b"[E:onnxruntime:Default, provider_bridge_ort.cc:2195 TryGetProviderInfo_TensorRT]"
                b" Failed to load library libonnxruntime_providers_tensorrt.so with error: "
                b"libnvinfer.so.10: cannot open shared object file: No such file or directory\n")
    sys.stderr.write("a Python-level warning\n")
    raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : TensorRT EP could not be created")


def test_a_provider_that_fails_reports_onnxruntimes_own_error(conv, monkeypatch, tmp_path,
                                                              capfd):
    FakeOrt(monkeypatch, noisy_failure, cuda_version="13.0")
    with pytest.raises(ProviderError) as e:
        Engine(conv, provider="tensorrt", cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert "TensorRT EP could not be created" in msg  # the exception's own text
    assert "libnvinfer.so.10: cannot open shared object file" in msg  # its log line
    assert "CUDA 13 build" in msg and "tensorrt-cu13>=10,<11" in msg  # the wheel's hint
    out = capfd.readouterr()
    assert "EP Error" not in out.out + out.err and "libnvinfer" not in out.out + out.err
    assert "Python-level warning" not in out.err
    # No TensorRT session started: no cache folder is left behind.
    assert not (tmp_path / "cache" / "tensorrt").exists()
    os.write(1, b"")  # fd 1 and 2 were restored


def test_a_provider_missing_from_the_session_is_refused_with_the_log(conv, monkeypatch,
                                                                     tmp_path, capfd):
    def trt_did_not_load(names):
        os.write(2, b"[W:onnxruntime:Default, onnxruntime_pybind_state.cc:1055 "
                    b"CreateExecutionProviderFactoryInstance] Failed to create "
                    b"TensorrtExecutionProvider. Require cuDNN 9.* and CUDA 13.*\n")
        return ["CUDAExecutionProvider"]

    FakeOrt(monkeypatch, trt_did_not_load, cuda_version="12.8")
    with pytest.raises(ProviderError, match=r"did not load \(the session would run on CUDA\)"
                                            r".*Failed to create TensorrtExecutionProvider"
                                            r".*tensorrt-cu12>=10,<11"):
        Engine(conv, provider="tensorrt", cache_dir=tmp_path / "cache")
    assert "Failed to create" not in capfd.readouterr().err
    assert not (tmp_path / "cache" / "tensorrt").exists()


def test_auto_passes_over_a_failing_gpu_quietly(conv, monkeypatch, tmp_path, capfd):
    FakeOrt(monkeypatch, noisy_failure)
    engine = Engine(conv, provider="auto", cache_dir=tmp_path / "cache")
    assert engine.provider == BEST_CPU
    assert [p for p, _ in engine.passed_over] == ["tensorrt", "cuda"]
    out = capfd.readouterr()
    assert "EP Error" not in out.out and "libnvinfer" not in out.err
    x = np.zeros((1, 3, 32, 32), np.float32)
    assert engine.run(x).shape == (1, 3, 32, 32)
