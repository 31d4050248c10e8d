"""An NVIDIA Triton model repository for an exported generator.

    DIR/<name>/config.pbtxt
    DIR/<name>/1/model.onnx

Triton serves it with its onnxruntime backend; the TensorRT accelerator builds an FP16
engine from the ONNX file on first load (cached on disk), and dynamic batching gathers
concurrent requests into one batch, which is safe because the exported generator is
batch-invariant (an image's output never depends on its batch neighbours).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from p2p.runtime.errors import ExportError
from p2p.runtime.metadata import ModelMetadata
from p2p.runtime.files import atomic_write

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}


def config_pbtxt(name: str, meta: ModelMetadata, max_batch_size: int) -> str:
    """The model configuration in protobuf text format (Triton's model_config.proto)."""
    # Triton dims exclude the batch axis (max_batch_size > 0 adds it); -1 marks dynamic H, W.
    hw = "-1, -1" if meta.dynamic_size else f"{meta.image_size}, {meta.image_size}"
    preferred = sorted({b for b in (4, 8, 16, 32) if b <= max_batch_size}) or [max_batch_size]
    return f"""\
# pix2pix generator exported by p2p {meta.p2p_version}: {meta.direction}, {meta.color_space},
# {meta.norm_mode} norm. Input: NCHW in [-1, 1]; H and W {"multiples of " +
    str(meta.size_multiple) if meta.dynamic_size else "= " + str(meta.image_size)}.
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{meta.input_name}"
    data_type: {TRITON_TYPES[meta.input_dtype]}
    dims: [ {meta.in_channels}, {hw} ]
  }}
]
output [
  {{
    name: "{meta.output_name}"
    data_type: {TRITON_TYPES[meta.output_dtype]}
    dims: [ {meta.out_channels}, {hw} ]
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {", ".join(map(str, preferred))} ]
  max_queue_delay_microseconds: 2000
}}
instance_group [
  {{
    count: 1
    kind: KIND_GPU
  }}
]
optimization {{
  execution_accelerators {{
    gpu_execution_accelerator: [
      {{
        name: "tensorrt"
        parameters {{ key: "precision_mode" value: "FP16" }}
        parameters {{ key: "max_workspace_size_bytes" value: "1073741824" }}
        parameters {{ key: "trt_engine_cache_enable" value: "1" }}
        parameters {{ key: "trt_engine_cache_path" value: "/tmp/p2p_trt_cache/{name}" }}
      }}
    ]
  }}
}}
"""


def write_model(repo: Path, name: str, model: Path, meta: ModelMetadata,
                max_batch_size: int) -> list[Path]:
    """Copy ``model`` into ``repo/name/1/model.onnx`` and write its config (both atomic)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ExportError(f"Triton model name {name!r}: use letters, digits, '_', '.', '-'")
    if max_batch_size < 1:
        raise ExportError(f"Triton max batch size {max_batch_size} must be >= 1")
    folder = Path(repo) / name
    onnx_path = atomic_write(folder / "1" / "model.onnx",
                             lambda tmp: shutil.copyfile(model, tmp))
    text = config_pbtxt(name, meta, max_batch_size)
    config = atomic_write(folder / "config.pbtxt", lambda tmp: tmp.write_text(text))
    return [onnx_path, config]
