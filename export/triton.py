"""An NVIDIA Triton model repository for an exported generator.

    DIR/<name>/config.pbtxt
    DIR/<name>/1/model.onnx

Triton serves it with its onnxruntime backend and the TensorRT accelerator, whose parameters
are those of triton-inference-server/onnxruntime_backend's README ("Parameter mapping between
ONNX Runtime and Triton ONNXRuntime Backend"):
- ``precision_mode`` follows the model: FP16 for a model exported with ``--fp16``, FP32
  otherwise (``trt_fp16`` overrides); TensorRT never quietly runs another precision;
- ``trt_engine_cache_path`` is one folder under /tmp: the TensorRT EP creates the last level of
  its cache path and nothing above it, and /tmp exists in every container, so the model loads
  in a fresh container (the engine is then built on first load; mount a volume there to keep
  it across restarts);
- ``trt_profile_min/opt/max_shapes`` cover batch 1..max_batch_size (and the H, W range of a
  dynamic-size model), so the engine is built once at load, not rebuilt as dynamic batching
  grows the batch.
Dynamic batching gathers concurrent requests into one batch, which is safe because the
exported generator is batch-invariant (an image's output never depends on its neighbours).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from p2p.runtime.backends.ort import TRT_MAX_SIDE
from p2p.runtime.errors import ExportError
from p2p.runtime.metadata import ModelMetadata
from p2p.runtime.files import atomic_write

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}
WORKSPACE_BYTES = 1 << 30


def trt_cache_path(name: str) -> str:
    """One level below /tmp: the TensorRT EP creates that folder itself in a fresh container."""
    return f"/tmp/p2p_trt_{name}"


def trt_profile(meta: ModelMetadata, max_batch_size: int) -> dict[str, str]:
    """TensorRT optimisation profile over the batch range Triton may form (1..max_batch_size)
    and, for dynamic-size models, sides size_multiple..max(image_size, TRT_MAX_SIDE)."""
    c, s = meta.in_channels, meta.image_size
    lo, hi = (meta.size_multiple, max(s, TRT_MAX_SIDE)) if meta.dynamic_size else (s, s)
    name = meta.input_name
    return {"trt_profile_min_shapes": f"{name}:1x{c}x{lo}x{lo}",
            "trt_profile_opt_shapes": f"{name}:{max_batch_size}x{c}x{s}x{s}",
            "trt_profile_max_shapes": f"{name}:{max_batch_size}x{c}x{hi}x{hi}"}


def config_pbtxt(name: str, meta: ModelMetadata, max_batch_size: int,
                 trt_fp16: bool | None = None) -> str:
    """The model configuration in protobuf text format (Triton's model_config.proto).
    ``trt_fp16``: TensorRT precision; None follows the model's input dtype."""
    # Triton dims exclude the batch axis (max_batch_size > 0 adds it); -1 marks dynamic H, W.
    hw = "-1, -1" if meta.dynamic_size else f"{meta.image_size}, {meta.image_size}"
    preferred = sorted({b for b in (4, 8, 16, 32) if b <= max_batch_size}) or [max_batch_size]
    fp16 = meta.input_dtype == "float16" if trt_fp16 is None else trt_fp16
    trt = {"precision_mode": "FP16" if fp16 else "FP32",
           "max_workspace_size_bytes": str(WORKSPACE_BYTES),
           "trt_engine_cache_enable": "1", "trt_engine_cache_path": trt_cache_path(name),
           **trt_profile(meta, max_batch_size)}
    params = "\n".join(f'        parameters {{ key: "{k}" value: "{v}" }}'
                       for k, v in trt.items())
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
{params}
      }}
    ]
  }}
}}
"""


def write_model(repo: Path, name: str, model: Path, meta: ModelMetadata,
                max_batch_size: int, trt_fp16: bool | None = None) -> list[Path]:
    """Copy ``model`` into ``repo/name/1/model.onnx`` and write its config (both atomic)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ExportError(f"Triton model name {name!r}: use letters, digits, '_', '.', '-'")
    if max_batch_size < 1:
        raise ExportError(f"Triton max batch size {max_batch_size} must be >= 1")
    folder = Path(repo) / name
    onnx_path = atomic_write(folder / "1" / "model.onnx",
                             lambda tmp: shutil.copyfile(model, tmp))
    text = config_pbtxt(name, meta, max_batch_size, trt_fp16)
    config = atomic_write(folder / "config.pbtxt", lambda tmp: tmp.write_text(text))
    return [onnx_path, config]
