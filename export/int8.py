"""The INT8 model: post-training static quantization of the exported graph with NNCF.

Recipe (NNCF's post-training quantization, ``nncf.quantize``; OpenVINO's documented path for
ONNX models, https://docs.openvino.ai/ "Post-training Quantization"): every convolution gets
INT8 weights (per output channel) and INT8 input activations whose ranges come from a
calibration set of real inputs; the result is QDQ ONNX (QuantizeLinear/DequantizeLinear pairs
around each convolution), which OpenVINO and onnxruntime both run. Normalisation
(InstanceNormalization, the per-image statistics), the activations and the output tanh stay
in float: they are in ``ignored_scope`` and never see a QDQ pair (checked after quantizing).

Up-convolutions. Both graph forms quantize all sixteen convolutions: NNCF puts QDQ pairs
around ConvTranspose just as around Conv. ``SUBPIXEL`` picks the form that is written; the
sub-pixel form (``SubPixelUp``) rewrites each transposed convolution as one 2x2 convolution
with four phases and a depth-to-space, the same rewrite ``runtime/openvino.py`` applies at
load time for BF16. Measured side by side on the 2-core AMX Xeon (OpenVINO 2026.4, batch 8,
U-Net-256 ngf 64, 2 streams; a machine shared with other jobs, so ratios only): plain
ConvTranspose 128-143 img/s, sub-pixel 44-46 img/s (its slices, concat and depth-to-space
break the INT8 layout between layers). OpenVINO runs the plain form's up-convolutions as INT8
(u8 activations, read back from the compiled model), so the plain form is written.

Preset: NNCF's PERFORMANCE (symmetric INT8 activations). MIXED (asymmetric activations)
measured ~3x slower on OpenVINO here for +2 dB on an untrained net, so it is not used.
Activation ranges: NNCF's default estimator. MINMAX (extremes over the whole set) gained
0.6-1.4 dB on the tiny test U-Nets but lost 1.8-1.9 dB on U-Net-256 calibrated on 48 facades
train label maps and checked on facades val: 52.5 vs 54.4 dB (onnxruntime; 52.3 vs 54.1 dB
on OpenVINO) for a generator trained 200 steps, 36.0 vs 37.8 dB for random weights.

Calibration inputs are decoded and preprocessed by ``p2p.runtime.images.prepare``, the code
``p2p-translate`` and ``p2p-serve`` feed the engine with, so the ranges NNCF measures are
those of real requests.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from p2p.runtime import images
from p2p.runtime.errors import DataError, ExportError, P2PError, one_line
from p2p.runtime.listing import list_images
from p2p.runtime.metadata import ModelMetadata
from p2p.trainer.rundata import RunData, find, records_data

MAX_CALIBRATION = 300  # NNCF's default subset size; a few hundred images at most (issue 11)
DEFAULT_CALIBRATION = 100  # enough for stable ranges on facades, ~1 min on 2 cores
# Which graph form is written (see the module docstring): True = sub-pixel up-convolutions,
# kept so the measurement can be repeated (benchmarks) when OpenVINO changes.
SUBPIXEL = False
FLOAT_OPS = ("InstanceNormalization",)  # normalisation stays float (ignored_scope)


# --- the sub-pixel form of an up-convolution ------------------------------------------------

class SubPixelUp(nn.Module):
    """ConvTranspose2d(kernel 4, stride 2, padding 1) as conv 2x2 -> 4 phases -> interleave.

    Output pixel (2m + a, 2n + b) only sees input rows (m - 1 + a, m + a) and cols
    (n - 1 + b, n + b), through kernel rows (3 - a, 1 - a) and cols (3 - b, 1 - b); one 2x2
    convolution with padding 1 and 4 * C_out channels computes every phase on an
    (H + 1) x (W + 1) grid, phase (a, b) is that grid shifted by (a, b). Exact up to float
    summation order (the derivation in ``p2p.runtime.backends.openvino.subpixel_deconvolutions``).
    Shapes: (N, C_in, H, W) float32 -> (N, C_out, 2H, 2W).
    """

    TAPS = ((3, 1), (2, 0))  # TAPS[a][t]: kernel row of phase a for window row t

    def __init__(self, up: nn.ConvTranspose2d):
        super().__init__()
        w = up.weight.detach()  # (C_in, C_out, 4, 4)
        self.c_out = w.shape[1]
        phases = [w[:, :, list(self.TAPS[a]), :][:, :, :, list(self.TAPS[b])].transpose(0, 1)
                  for a in range(2) for b in range(2)]
        # Every phase adds the same bias: it goes into the convolution, four times over, so
        # the graph has no separate Add (a quantized Add before the depth-to-space breaks
        # OpenVINO 2026.4's low-precision DepthToSpace transformation at compile time).
        self.conv = nn.Conv2d(w.shape[0], 4 * self.c_out, 2, padding=1,
                              bias=up.bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(torch.cat(phases))
            if up.bias is not None:
                self.conv.bias.copy_(up.bias.detach().repeat(4))

    @staticmethod
    def fits(m: nn.Module) -> bool:
        return (isinstance(m, nn.ConvTranspose2d) and m.kernel_size == (4, 4)
                and m.stride == (2, 2) and m.padding == (1, 1) and m.output_padding == (0, 0)
                and m.dilation == (1, 1) and m.groups == 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        grid = self.conv(x)
        c = self.c_out
        phases = [grid[:, k * c:(k + 1) * c, a:a + h, b:b + w]
                  for k, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1)))]
        # (N, 4C, H, W) with channel (a, b, c) -> (N, C, 2H, 2W): depth-to-space, blocks first.
        return F.pixel_shuffle(torch.cat(phases, 1).unflatten(1, (4, c)).transpose(1, 2)
                               .flatten(1, 2), 2)


def subpixel(graph: nn.Module) -> int:
    """Replace, in place, every up-convolution that fits ``SubPixelUp``; returns the count."""
    count = 0
    for seq in [m for m in graph.modules() if isinstance(m, nn.Sequential)]:
        for i, layer in enumerate(seq):
            if SubPixelUp.fits(layer):
                seq[i] = SubPixelUp(layer)
                count += 1
    return count


# --- calibration ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Calibration:
    """Model inputs for NNCF: (1, C, H, W) float32 arrays, and what they were."""

    arrays: list
    folder: Path
    sha256: str  # over (relative name, file SHA-256) of every image used, in order

    @property
    def count(self) -> int:
        return len(self.arrays)


def load_calibration(folder: Path, meta: ModelMetadata, limit: int,
                     split: str = "auto") -> Calibration:
    """Up to ``limit`` images from ``folder`` (sorted, recursive: ``listing.list_images``),
    prepared as the engine's callers prepare them (``images.prepare``; ``split``: the run's
    own input half or 'none' for its training folder, auto for a ``--calibration`` folder).
    Unreadable files are skipped and named; none usable is an error."""
    if not folder.is_dir():
        raise ExportError(f"--calibration {folder}: not a folder")
    if limit < 1:
        raise ExportError(f"calibration needs at least one image, asked for {limit}")
    arrays, h, skipped = [], hashlib.sha256(), []  # skipped: one line per file, with why
    shape = None
    for rel in list_images(folder):
        if len(arrays) == limit:
            break
        path = folder / rel
        try:
            prep = images.prepare(path, meta, split)
            data = path.read_bytes()
        except (P2PError, OSError) as e:
            skipped.append(f"{path}: {e}" if str(path) not in str(e) else str(e))
            continue
        if shape is not None and prep.array.shape != shape:
            # dynamic-size models: one calibration shape keeps NNCF simple
            skipped.append(f"{path}: {prep.array.shape[1]}x{prep.array.shape[2]} after "
                           f"preprocessing, not {shape[1]}x{shape[2]} like the first image")
            continue
        shape = prep.array.shape
        arrays.append(prep.array[None])
        h.update(rel.as_posix().encode() + b"\0" + hashlib.sha256(data).digest())
    if not arrays:
        raise ExportError(f"--calibration {folder}: no readable images" + (
            f" ({len(skipped)} skipped; first: {skipped[0]})" if skipped else
            " (no image files in it)"))
    if skipped:  # named, like every bad input; the export goes on with the others
        print(f"calibration: skipped {len(skipped)} files in {folder}:")
        for line in skipped[:10]:
            print(f"  {line}")
        if len(skipped) > 10:
            print(f"  ... and {len(skipped) - 10} more")
    return Calibration(arrays, folder, h.hexdigest())


# --- quantization ---------------------------------------------------------------------------

def quantize(model: onnx.ModelProto, calib: Calibration, input_name: str) -> onnx.ModelProto:
    """NNCF post-training static quantization of an FP32 ONNX model -> QDQ ONNX.

    Raises ExportError when NNCF is missing, fails, or leaves a convolution unquantized or a
    normalisation quantized.
    """
    try:
        import nncf
    except ImportError:
        raise ExportError("--int8 needs nncf: pip install 'p2p[int8]'") from None
    logging.getLogger("nncf").setLevel(logging.ERROR)  # p2p-export prints its own summary
    dataset = nncf.Dataset(calib.arrays, lambda x: {input_name: x})
    try:
        q = nncf.quantize(model, dataset, subset_size=calib.count,
                          preset=nncf.QuantizationPreset.PERFORMANCE,
                          ignored_scope=nncf.IgnoredScope(types=list(FLOAT_OPS), validate=False))
    except Exception as e:  # nncf raises many untyped errors
        raise ExportError(f"--int8: nncf quantization failed: {one_line(e)[:300]}") from None
    check_quantized(q)
    return q


def check_quantized(model: onnx.ModelProto) -> tuple[int, int]:
    """(quantized convolutions, all convolutions). ExportError unless every Conv and
    ConvTranspose reads a DequantizeLinear'd input and weight, and no normalisation does."""
    made_by = {o: n.op_type for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    bare = [n.name or n.op_type for n in convs
            if not all(made_by.get(i) == "DequantizeLinear" for i in n.input[:2])]
    if bare:
        raise ExportError(f"--int8: {len(bare)} of {len(convs)} convolutions were not "
                          f"quantized ({', '.join(bare[:3])}...)")
    fake = [n.name or n.op_type for n in model.graph.node if n.op_type in FLOAT_OPS
            and made_by.get(n.input[0]) == "DequantizeLinear"]
    if fake:
        raise ExportError(f"--int8: normalisation was quantized ({', '.join(fake[:3])})")
    return len(convs), len(convs)


def int8_path(output: Path) -> Path:
    from p2p.runtime.precision import export_path

    return export_path(output, "int8")


def default_calibration(loaded) -> RunData:
    """The run's own training inputs (``trainer.rundata``: where the trainer read them, from
    any working folder); an ExportError naming the fix when they are not here."""
    if not records_data(loaded.task):
        raise ExportError(f"--int8: {loaded.path.name} records no training data to calibrate "
                          "on; pass --calibration DIR (images like the model's inputs)")
    try:
        return find(loaded.task)
    except DataError as e:
        raise ExportError(f"--int8: cannot calibrate on the run's training images: {e}; "
                          "set P2P_DATA or pass --calibration DIR") from None
