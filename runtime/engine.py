"""``Engine``: one inference session for an exported p2p model.

Minimal first version (CPU provider only); the runtime issue grows it into the
TensorRT / CUDA / CPU / OpenVINO engine. The public surface below is the contract that
``p2p.export`` (validation), ``p2p-translate``, ``p2p-serve`` and the benchmarks use:

    engine = Engine(path, provider="auto", batch_size=8, threads=None)
    engine.metadata   # ModelMetadata read from the file
    engine.provider   # the provider that actually runs ("cpu", "cuda", ...), never a wish
    engine.run(x)     # NCHW float32 in [-1, 1], any batch size -> NCHW float32 in [-1, 1]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ModelError, ProviderError, choices
from .metadata import ModelMetadata

PROVIDERS = ("auto", "cpu", "cuda", "tensorrt", "openvino")


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise ProviderError("onnxruntime is not installed: pip install 'p2p[cpu]' "
                            "(or 'p2p[gpu]' for CUDA/TensorRT)") from None
    return onnxruntime


class Engine:
    def __init__(self, model, provider: str = "auto", batch_size: int = 8,
                 threads: int | None = None):
        if provider not in PROVIDERS:
            raise ProviderError(f"unknown provider {provider!r}; allowed: {choices(PROVIDERS)}")
        if provider not in ("auto", "cpu"):
            raise ProviderError(f"provider {provider!r} is not implemented yet")
        self.path = Path(model)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such model file")
        ort = _ort()
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise ModelError(f"{self.path}: onnxruntime cannot load it: "
                             f"{str(e).splitlines()[0][:200]}") from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = ModelMetadata.from_props(props, where=str(self.path))
        self.provider = "cpu"
        self.batch_size = batch_size
        self._dtype = np.float16 if self.metadata.input_dtype == "float16" else np.float32

    def run(self, x: np.ndarray) -> np.ndarray:
        outs = []
        for i in range(0, len(x), self.batch_size):
            chunk = np.ascontiguousarray(x[i:i + self.batch_size], dtype=self._dtype)
            (y,) = self.session.run([self.metadata.output_name], {self.metadata.input_name: chunk})
            outs.append(y.astype(np.float32, copy=False))
        return np.concatenate(outs) if outs else np.zeros((0,), np.float32)
