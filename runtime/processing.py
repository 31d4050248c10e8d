"""The pre- and post-processing of ``p2p.runtime.images`` written down as data, for a page.

    doc = page_metadata(meta)   # {"metadata": {...the one schema...}, "rules": {...}}

onnxruntime-web does not expose an ONNX file's ``metadata_props``, so a ``--web`` site carries
the model's metadata as JSON, and with it the exact steps ``images.prepare`` and
``images.to_image`` take: which half of a 2:1 pair feeds the model, the resize (Pillow's
bicubic, which the page reimplements), the padding of dynamic models, the value mapping
(uint8 -> ``v * scale + offset`` in float32, and back with round-half-even and clipping), the
greyscale weights, and for Lab models the colour matrix and scalings of ``runtime/color.py``.
Every number is taken from the code that applies it in Python (``color``'s constants, the
metadata's ``value_range``), never retyped; ``tests/test_web.py`` applies these rules in numpy
and checks them against ``images``, and checks the page against ``p2p-translate``.
"""

from __future__ import annotations

import dataclasses
import json
import functools

import numpy as np
from PIL import Image

from . import color
from .metadata import ModelMetadata

RULES_VERSION = 2  # 2: the input rule divides (images.normalize), was scale + offset
# Pillow's convert("L") for RGB: ITU-R 601-2 luma in 16-bit fixed point,
# (R*19595 + G*38470 + B*7471 + 0x8000) >> 16 (Pillow src/libImaging/Convert.c, L24).
LUMA_FIXED16 = (19595, 38470, 7471)


@functools.cache
def pillow_vertical_first() -> bool:
    """Whether this Pillow runs the vertical pass of a resize first when the height shrinks
    by more than twice as many pixels as the width (Pillow 13's ImagingResampleInner,
    src/libImaging/Resample.c; earlier versions always run the horizontal pass first). The
    two orders round to uint8 between the passes at different points, so the page must take
    the order ``images`` takes here: probed on a 37x45 -> 32x32 resize, not guessed from a
    version number."""
    a = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 37), dtype=np.uint8))
    once = np.asarray(a.resize((32, 32), Image.BICUBIC))
    across_then_down = a.resize((32, 45), Image.BICUBIC).resize((32, 32), Image.BICUBIC)
    return not np.array_equal(once, np.asarray(across_then_down))


def _divisor(meta: ModelMetadata) -> np.float32:
    """images.normalize's divisor: data units per model unit (127.5 for 8-bit into [-1, 1])."""
    (ilo, ihi), (lo, hi) = meta.input_range, meta.value_range
    return np.float32((ihi - ilo) / (hi - lo))


def rules(meta: ModelMetadata) -> dict:
    """The processing of ``meta``'s model as JSON-ready data (see the module doc)."""
    lo, hi = meta.value_range
    lab = meta.color_space == "lab"
    doc = {
        "version": RULES_VERSION,
        # images.choose_half, split "auto": an exactly 2:1 image is an A|B pair and the
        # model's direction names its input half; a Lab (colorization) model never splits.
        "split": {"aspect": 2, "input_half": meta.input_half, "never": lab},
        # images._to_array: a fixed-size model sees every image resized to its size.
        # Pillow's bicubic (a = -0.5, support scaled when shrinking; 22-bit fixed point and
        # a uint8 between the passes for 8-bit images, float for mode F), horizontal pass
        # first unless vertical_first and (h - oh) > 2 * (w - ow) with h - oh > 0.
        "resize": {"size": None if meta.dynamic_size else [meta.image_size] * 2,
                   "filter": "pillow-bicubic", "vertical_first": pillow_vertical_first()},
        # images.pad_to_multiple: bottom/right, reflect, edge when the image is too small.
        "pad": {"multiple": meta.size_multiple if meta.dynamic_size else 1,
                "mode": "reflect-else-edge"},
        "input": {
            "color_space": meta.color_space,
            "channels": meta.in_channels,
            "dtype": meta.input_dtype,
            # x = float32(float32(u8 / float32(divisor)) + float32(offset)), per channel,
            # (C, H, W): images.normalize's arithmetic (8-bit into [-1, 1]: u8 / 127.5 - 1)
            "divisor": float(_divisor(meta)),
            "offset": float(np.float32(lo - meta.input_range[0] / float(_divisor(meta)))),
            "grey_fixed16": list(LUMA_FIXED16),
        },
        "output": {
            "channels": meta.out_channels,
            "dtype": meta.output_dtype,
            # u8 = clip(rint_half_even(float32(float32(y - offset) * float32(scale))), 0, 255)
            "scale": float(np.float32(255.0 / (hi - lo))),
            "offset": float(np.float32(lo)),
            "round": "half-even",
            # back at the input's size (after the split), Pillow bicubic on the uint8 image
            "size": "input",
        },
    }
    if lab:
        doc["lab"] = {
            "rgb_to_xyz": color._M.tolist(),
            "xyz_to_rgb": color._M_INV.tolist(),
            "white": color._WHITE.tolist(),
            # model L = L / 50 - 1; ab = ab / AB_SCALE (color.lab_to_model)
            "L_scale": 50.0, "ab_scale": color.AB_SCALE,
        }
    return doc


def page_metadata(meta: ModelMetadata, model_file: str = "model.onnx",
                  model_bytes: int = 0) -> dict:
    """What a ``--web`` site's ``model.json`` holds: the schema's fields, the precision the
    file runs in, the processing rules, and the model file the page loads."""
    # Through JSON and back: tuples (value_range, input_range, ...) become the lists that
    # model.json holds, so the page and this dict compare equal.
    fields = json.loads(json.dumps(dataclasses.asdict(meta)))
    fields["model_precision"] = meta.model_precision
    return {"metadata": fields, "rules": rules(meta),
            "model": {"file": model_file, "bytes": model_bytes}}
