"""The one schema of what an exported model says about itself.

``p2p.export`` writes it into the ONNX file's ``metadata_props``; ``p2p.runtime`` reads it
back. Nothing else holds these facts, so ``p2p-translate`` needs no architecture flags.
All values are strings in ONNX; this module owns the conversion both ways.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Mapping

from .errors import ModelError, choices
from .precision import REGISTRY

PREFIX = "p2p."
SCHEMA_VERSION = 1

DIRECTIONS = ("AtoB", "BtoA")
COLOR_SPACES = ("rgb", "lab")  # lab: input is L (1 channel), output is ab (2 channels)
NORM_MODES = ("per-image", "running")
DTYPES = ("float32", "float16")
# What the file's arithmetic is: fp32 (exact), fp16 (FP16 weights/activations), int8 (QDQ:
# INT8 convolutions from NNCF post-training quantization, float normalisation).
MODEL_PRECISIONS = tuple(dict.fromkeys(p.file for p in REGISTRY.values()))  # fp32 int8 fp16
# The sample types of the data a model was trained on (its images' bit depth), and the range
# each is read in unless the file records another (``input_range``/``output_range``).
DATA_DEPTHS = ("uint8", "uint16", "float32")
NATURAL_RANGE = {"uint8": (0.0, 255.0), "uint16": (0.0, 65535.0), "float32": (0.0, 1.0)}
_RANGES = ("value_range", "input_range", "output_range")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)  # (JSON true is no 1)


# The JSON type each field's annotation takes (ranges are checked in __post_init__).
_JSON_TYPES = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
}


@dataclass(frozen=True)
class ModelMetadata:
    direction: str  # which half of an A|B dataset image is the input
    image_size: int  # the size the model was trained at (square)
    size_multiple: int  # H and W must be multiples of this (2 ** number of downsamplings)
    dynamic_size: bool  # True when H and W are dynamic axes (else exactly image_size)
    color_space: str
    in_channels: int
    out_channels: int
    norm_mode: str
    input_dtype: str = "float32"
    output_dtype: str = "float32"
    input_name: str = "input"
    output_name: str = "output"
    layout: str = "NCHW"
    value_range: tuple[float, float] = (-1.0, 1.0)
    training_step: int = 0
    checkpoint_sha256: str = ""
    source: str = "p2p"  # "p2p" or "junyanz" (pytorch-CycleGAN-and-pix2pix state_dict)
    source_url: str = ""  # where the checkpoint was downloaded from (p2p-pretrained), if it was
    p2p_version: str = ""
    # "" = derived from input_dtype (files written before the field: fp16 or fp32).
    precision: str = ""
    calibration_images: int = 0  # int8: how many images NNCF calibrated on
    calibration_sha256: str = ""  # int8: SHA-256 over (name, file SHA-256) of that set
    verified: bool = False  # p2p-export's checks passed (False: --no-verify, or older files)
    # The training data's depth and the data values that map to the ends of value_range, for
    # the input and the output images; p2p-translate writes outputs at output_depth. Files
    # written before these fields were trained on 8-bit images: the defaults.
    input_depth: str = "uint8"
    input_range: tuple[float, float] = (0.0, 255.0)
    output_depth: str = "uint8"
    output_range: tuple[float, float] = (0.0, 255.0)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        for name, value, allowed in (
            ("direction", self.direction, DIRECTIONS),
            ("color_space", self.color_space, COLOR_SPACES),
            ("norm_mode", self.norm_mode, NORM_MODES),
            ("input_dtype", self.input_dtype, DTYPES),
            ("output_dtype", self.output_dtype, DTYPES),
            ("precision", self.model_precision, MODEL_PRECISIONS),
            ("input_depth", self.input_depth, DATA_DEPTHS),
            ("output_depth", self.output_depth, DATA_DEPTHS),
        ):
            if value not in allowed:
                raise ModelError(f"metadata {name}={value!r} is not one of {choices(allowed)}")
        for name in ("image_size", "size_multiple", "in_channels", "out_channels"):
            if getattr(self, name) < 1:
                raise ModelError(f"metadata {name}={getattr(self, name)!r} is not a positive "
                                 "integer")
        for name in _RANGES:
            r = getattr(self, name)
            if (len(r) != 2 or not all(_is_number(v) for v in r)
                    or not float(r[0]) < float(r[1]) or not all(abs(v) < 1e30 for v in r)):
                raise ModelError(f"metadata {name}={list(r)!r} is not a finite [low, high] "
                                 "with low < high")
        if self.layout != "NCHW":
            raise ModelError(f"metadata layout={self.layout!r} is not NCHW")
        if self.image_size <= 0 or self.size_multiple <= 0 or self.image_size % self.size_multiple:
            raise ModelError(
                f"metadata image_size={self.image_size} is not a positive multiple of "
                f"size_multiple={self.size_multiple}"
            )

    def to_props(self) -> dict[str, str]:
        """ONNX ``metadata_props``: every field as a string under the ``p2p.`` prefix."""
        return {PREFIX + k: json.dumps(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], where: str = "model") -> "ModelMetadata":
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for key, raw in props.items():
            if key.startswith(PREFIX) and key[len(PREFIX):] in fields:
                try:
                    values[key[len(PREFIX):]] = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise ModelError(f"{where}: metadata {key} is not valid JSON: {e}") from None
        if not values:
            raise ModelError(
                f"{where}: no p2p metadata (export it with p2p-export, which records direction, "
                "image size, colour space and norm mode)"
            )
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in values]
        if missing:
            raise ModelError(f"{where}: metadata lacks {', '.join(PREFIX + k for k in missing)}")
        for f in dataclasses.fields(cls):  # a JSON value of another type: one line here,
            if f.name not in values:  # not a traceback or a wrong result further on
                continue
            value, kind = values[f.name], _JSON_TYPES.get(f.type)
            if kind is not None and not kind[0](value):
                raise ModelError(f"{where}: metadata {PREFIX + f.name}={json.dumps(value)} is "
                                 f"not {kind[1]}")
        if values.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
            raise ModelError(
                f"{where}: metadata schema {values['schema_version']} is newer than this p2p "
                f"understands ({SCHEMA_VERSION}); upgrade p2p"
            )
        for name in _RANGES:
            if name in values:
                if not isinstance(values[name], list):
                    raise ModelError(f"{where}: metadata {PREFIX + name} is not a list")
                values[name] = tuple(values[name])
        try:
            return cls(**values)
        except TypeError as e:
            raise ModelError(f"{where}: bad metadata: {e}") from None
        except ModelError as e:
            raise ModelError(f"{where}: {e}") from None

    @property
    def model_precision(self) -> str:
        """fp32, fp16 or int8: the recorded precision, or for older files the input dtype's."""
        return self.precision or ("fp16" if self.input_dtype == "float16" else "fp32")

    @property
    def input_half(self) -> str:
        """Which half of a side-by-side A|B dataset image feeds the model."""
        return "left" if self.direction == "AtoB" else "right"

    @property
    def target_half(self) -> str:
        return "right" if self.direction == "AtoB" else "left"
