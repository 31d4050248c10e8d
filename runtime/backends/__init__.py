"""Backends: where an ``Engine``'s session lives.

``Engine`` owns the contract (the model-file checks of ``p2p.runtime.modelfile``, shape
checks, batching, float32 out); a backend owns one session and runs one chunk. A backend is
any object that satisfies ``Backend`` below and raises ``ProviderError`` from its constructor
when its provider cannot run here. onnxruntime (``ort.py``) serves cpu, cuda and tensorrt;
OpenVINO (``openvino.py``, extra ``p2p[openvino]``) reads the same ONNX file.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..errors import ProviderError
from ..modelfile import ModelFile


class Backend(Protocol):
    provider: str  # what actually runs: "cpu", "cuda", "tensorrt", "openvino"
    fixed_batch: int | None  # the model's static batch dimension, None when dynamic

    def describe(self) -> str:
        """One line for logs: provider, threads, precision, cache."""

    def check_size(self, h: int, w: int) -> None:
        """ValueError for sizes this backend cannot run (e.g. outside a TensorRT profile)."""

    def run(self, x: np.ndarray) -> np.ndarray:
        """x: (n <= batch size, C, H, W) in the model's input dtype -> (n, C_out, H, W)."""

    def close(self) -> None: ...


def openvino_available() -> bool:
    """Whether OpenVINO loads here. An import, not ``find_spec``: an install that is present
    but does not load (a missing shared library, a blocked module) must count as absent, or
    ``auto`` would rank INT8 first and then run it on onnxruntime's slower CPU path."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def auto_order() -> tuple[list[str], list[tuple[str, str]]]:
    """Providers for ``auto``, fastest first (each is tried until one loads), and those
    passed over without trying, with why: GPU providers when no CUDA device exists (trying
    them would only print onnxruntime's load errors and build nothing)."""
    from ..host import cuda_devices
    from .ort import available_providers

    have = available_providers()
    gpu = [p for p, ep in (("tensorrt", "TensorrtExecutionProvider"),
                           ("cuda", "CUDAExecutionProvider")) if ep in have]
    order, skipped = [], []
    if gpu:
        count, why = cuda_devices()
        if count:
            order += gpu
        else:
            skipped.append((", ".join(gpu), f"no CUDA device here: {why}"))
    if openvino_available():
        order.append("openvino")  # beats onnxruntime's CPU provider on x86 (BENCHMARKS.md)
    order.append("cpu")
    return order, skipped


def create(provider: str, model: ModelFile, options) -> Backend:
    """The backend for ``provider`` (not "auto") on a checked model file; ``options`` is an
    ``EngineOptions``. ``ProviderError`` when that provider cannot run here."""
    if options.precision not in (None, "fp32") and provider != "openvino":
        raise ProviderError(f"provider {provider}: precision {options.precision} runs on "
                            "openvino only (pip install 'p2p[openvino]', --provider openvino)")
    if provider == "openvino":
        from .openvino import backend

        return backend(provider, model.path, model.metadata, options)
    from .ort import ort_backend

    return ort_backend(provider, model, options)
