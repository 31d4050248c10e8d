"""Checks every exported file passes before it is published.

1. ``onnx.checker`` (full) and strict shape inference: the output shape must come out as
   (batch, out_channels, H, W).
2. onnxruntime, through the same ``Engine`` users run, against PyTorch on real-looking
   inputs (the run's val images, else its training images, found by ``trainer.rundata``;
   generated smooth images only where those are not here, and then said in a note):
   batch 1 and batch >= 4, max abs error and PSNR printed for each.
3. Batch invariance: image k alone gives the same output as image k inside the batch.
4. The metadata reads back (through ``Engine``) exactly as written.

The PyTorch reference is the *original* generator, not the exported graph's PyTorch form,
so the checks also prove the graph rewrite: per-image = BatchNorm in train mode at batch 1
with dropout off (the paper's test-time behaviour, minus the noise); running = eval mode.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from p2p.runtime import images, metrics
from p2p.runtime.engine import Engine
from p2p.runtime.errors import (DataError, ExportError, ImageError, NonFiniteOutput, P2PError,
                                one_line)
from p2p.runtime.metadata import ModelMetadata
from p2p.runtime.precision import REGISTRY
from p2p.trainer.data import list_images
from p2p.trainer.rundata import find

from .fp16 import emulate
from .int8 import check_quantized
from .load import Loaded

FP32_MAX_ABS = 1e-4  # onnxruntime vs PyTorch, FP32 model, values in [-1, 1]
# Bounds per precision live in the one registry (p2p.runtime.precision.REGISTRY):
FP16_MIN_PSNR = REGISTRY["fp16"].min_psnr_db  # dB over the [-1, 1] range, vs FP32 PyTorch
INT8_MIN_PSNR = REGISTRY["int8"].min_psnr_db  # (issue 11); ExportConfig.int8_min_psnr
# Image k alone vs inside a batch: the same arithmetic, so only kernel-choice rounding.
INVARIANCE_TOL = {name: p.invariance for name, p in REGISTRY.items() if p.name == p.file}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two model outputs in [-1, 1] (range 2), uncapped: p2p's one PSNR."""
    return metrics.psnr(a, b, data_range=2.0, cap=math.inf)


# --- inputs --------------------------------------------------------------------------------

def run_images(loaded: Loaded, meta: ModelMetadata, n: int) -> tuple[list, str]:
    """Up to n model inputs (C, S, S) float32 from the run's own held-out images (else its
    training images), prepared by ``images.prepare``, the code that feeds the engine in
    p2p-translate and p2p-serve, at the model's size; and what they are. ([], why) when the
    run's data is not here."""
    try:
        run = find(loaded.task)
    except DataError as e:
        return [], str(e)
    folder, what = run.check_images()
    fixed = dataclasses.replace(meta, dynamic_size=False)  # the checks run at S x S
    out = []
    try:
        paths = list_images(folder)  # the trainer's own listing of its folders
    except DataError as e:
        return [], str(e)
    for path in paths:
        try:
            x = images.prepare(path, fixed, run.split).array
        except ImageError:
            continue  # an unreadable image is not the model's problem (training names it)
        if x.shape[0] != meta.in_channels:
            return [], f"{path}: {x.shape[0]} channels, the model takes {meta.in_channels}"
        out.append(x)
        if len(out) == n:
            break
    return out, (f"{len(out)} {what}" if out else f"{folder}: no readable images")


def smooth_images(n: int, channels: int, hw: tuple[int, int], seed: int = 0) -> list:
    """Image-like inputs: a few low-frequency waves per channel, squashed into [-1, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:hw[0], 0:hw[1]] / max(hw)
    out = []
    for _ in range(n):
        img = np.zeros((channels, *hw))
        for c in range(channels):
            for _ in range(4):
                fx, fy, phase = rng.uniform(0.5, 4), rng.uniform(0.5, 4), rng.uniform(0, 6.3)
                img[c] += rng.uniform(0.3, 1) * np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
        out.append(np.tanh(img).astype(np.float32))
    return out


@dataclass(frozen=True)
class Inputs:
    x: np.ndarray  # (N, C, S, S), N >= 4
    source: str  # what they are, for the printout
    x_dynamic: np.ndarray | None  # (2, C, 2m, m) when H and W are dynamic

    @classmethod
    def build(cls, loaded: Loaded, meta: ModelMetadata, n: int) -> "Inputs":
        """The run's images (``run_images``); generated ones only where those are missing
        or too few, and then said in a ``note:`` line (never a quiet fallback)."""
        cfg, m, n = loaded.model, 2 ** loaded.model.num_downs, max(n, 4)
        size = (cfg.image_size, cfg.image_size)
        xs, source = run_images(loaded, meta, n)
        if not xs:
            print(f"note: the checks run on generated smooth images, not on the run's data: "
                  f"{source}")
            source = ""
        if len(xs) < n:  # top up with generated ones
            if xs:
                print(f"note: only {source}; topped up with {n - len(xs)} generated "
                      "smooth images")
            xs += smooth_images(n - len(xs), cfg.in_channels, size)
            source = (source + " + " if source else "") + "generated smooth images"
        x_dyn = None
        if meta.dynamic_size:  # a taller-than-wide size the model was not traced at
            x_dyn = np.stack([np.asarray(torch.nn.functional.interpolate(
                torch.from_numpy(xs[k][None]), size=(2 * m, m), mode="bilinear",
                align_corners=False)[0]) for k in range(2)])
        return cls(np.stack(xs), source, x_dyn)


# --- the PyTorch reference ------------------------------------------------------------------

class References:
    """PyTorch FP32 outputs of the original generator for the test inputs."""

    def __init__(self, generator: nn.Module, norm_mode: str, inputs: Inputs):
        self.norm_mode, self.inputs = norm_mode, inputs
        self.y = reference(generator, inputs.x, norm_mode)
        self.y_dynamic = (reference(generator, inputs.x_dynamic, norm_mode)
                          if inputs.x_dynamic is not None else None)
        if not all(np.isfinite(y).all() for y in (self.y, self.y_dynamic) if y is not None):
            # Nothing can be verified against NaN: every file would "match" or none would.
            raise ExportError("the checkpoint's generator gives NaN or Inf in PyTorch (its "
                              "weights are not finite?); no file can be verified")


@torch.no_grad()
def reference(generator: nn.Module, x: np.ndarray, norm_mode: str) -> np.ndarray:
    net = copy.deepcopy(generator)
    if norm_mode == "running":
        return net.eval()(torch.from_numpy(x)).numpy()
    # Train-mode BatchNorm uses the statistics of its batch: one image at a time gives each
    # image its own statistics. Dropout off: the export is deterministic by design.
    net.train()
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    return np.concatenate([net(torch.from_numpy(x[k:k + 1])).numpy() for k in range(len(x))])


# --- the checks ------------------------------------------------------------------------

def check_graph(path: Path, meta: ModelMetadata) -> tuple[str, onnx.ModelProto]:
    """onnx.checker (full) and strict shape inference; returns the output shape and model."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:  # onnx raises ValidationError / InferenceError / others
        raise ExportError(f"{path.name}: onnx checker: {one_line(e)}") from None
    dims = [d.dim_param or d.dim_value
            for d in inferred.graph.output[0].type.tensor_type.shape.dim]
    hw = [] if meta.dynamic_size else [meta.image_size, meta.image_size]
    if len(dims) != 4 or isinstance(dims[0], int) or dims[1] != meta.out_channels or (
            hw and dims[2:] != hw):
        raise ExportError(f"{path.name}: shape inference gives output {dims}, expected "
                          f"(batch, {meta.out_channels}, H, W)")
    return "[" + ", ".join(map(str, dims)) + "]", model


def verify(path: Path, label: str, refs: References, meta: ModelMetadata,
           int8_min_psnr: float = INT8_MIN_PSNR) -> dict:
    """Run every check on ``path``; print the numbers; raise ExportError on any failure
    (a NaN or Inf anywhere, in an output or a number, is a failure: ``metrics.psnr``).

    An INT8 file is also run on OpenVINO (when installed: the backend that runs it fast, and
    what ``--precision auto`` picks) with the same PSNR bound and batch-invariance check, and
    its graph is checked to quantize every convolution and no normalisation."""
    t0 = time.perf_counter()
    shape, model = check_graph(path, meta)
    print(f"{label}: onnx.checker (full) ok, shape inference: output {shape}")
    try:
        # The CPU graph cache is keyed by content: the published file (same bytes) finds the
        # optimised graph that this check leaves, so p2p-translate's first load is fast.
        engine = Engine(path, provider="cpu", batch_size=len(refs.inputs.x))
    except P2PError as e:
        raise ExportError(f"{label}: {e}") from None
    if engine.metadata != meta:
        raise ExportError(f"{label}: metadata reads back as {engine.metadata}, wrote {meta}")
    try:
        with engine:
            return _verify_outputs(path, label, refs, meta, model, engine, int8_min_psnr, t0)
    except NonFiniteOutput as e:
        raise ExportError(f"{label}: verification failed: {e}") from None


def _verify_outputs(path: Path, label: str, refs: References, meta: ModelMetadata,
                    model: onnx.ModelProto, engine: Engine, int8_min_psnr: float,
                    t0: float) -> dict:
    x, y = refs.inputs.x, refs.y
    t = time.perf_counter()
    alone = np.concatenate([engine.run(x[k:k + 1]) for k in range(len(x))])
    t1 = (time.perf_counter() - t) / len(x)
    t = time.perf_counter()
    together = engine.run(x)
    tn = (time.perf_counter() - t) / len(x)
    fp16, int8 = meta.model_precision == "fp16", meta.model_precision == "int8"
    r = {"max_abs_b1": float(np.abs(alone - y).max()), "psnr_b1": psnr(alone, y),
         "max_abs_bn": float(np.abs(together - y).max()), "psnr_bn": psnr(together, y),
         "invariance": float(np.abs(alone - together).max()), "batch": len(x)}
    # onnxruntime's CPU runs FP16 ops in FP32 (only weights and input are rounded): say so.
    what = ("FP16 model vs FP32 PyTorch (CPU: FP16 weights, FP32 arithmetic)" if fp16
            else "INT8 model vs FP32 PyTorch" if int8 else "FP32 model vs PyTorch")
    print(f"  onnxruntime (cpu) {what}, {refs.norm_mode} norm, on {refs.inputs.source}:")
    print(f"    batch 1: max abs error {r['max_abs_b1']:.3g}, PSNR {r['psnr_b1']:.1f} dB "
          f"({t1 * 1e3:.0f} ms/image)")
    print(f"    batch {len(x)}: max abs error {r['max_abs_bn']:.3g}, PSNR {r['psnr_bn']:.1f} dB "
          f"({tn * 1e3:.0f} ms/image)")
    print(f"    batch invariance (image alone vs in a batch of {len(x)}): max diff "
          f"{r['invariance']:.3g}")
    if fp16:  # the bound that matters: FP16 activations too, as a GPU computes them
        t = time.perf_counter()
        emulated = emulate(model, x)
        r["max_abs_gpu"], r["psnr_gpu"] = float(np.abs(emulated - y).max()), psnr(emulated, y)
        print(f"    FP16 arithmetic emulated (FP16 activations, FP32 accumulation, as on a "
              f"GPU), batch {len(x)}: max abs error {r['max_abs_gpu']:.3g}, PSNR "
              f"{r['psnr_gpu']:.1f} dB ({time.perf_counter() - t:.1f} s)")
    if refs.y_dynamic is not None:
        xd = refs.inputs.x_dynamic
        out = engine.run(xd)
        r["max_abs_dynamic"] = float(np.abs(out - refs.y_dynamic).max())
        r["psnr_dynamic"] = psnr(out, refs.y_dynamic)
        print(f"    dynamic size {xd.shape[2]}x{xd.shape[3]}: max abs error "
              f"{r['max_abs_dynamic']:.3g}, PSNR {r['psnr_dynamic']:.1f} dB")
    engine.close()
    if int8:
        r.update(_verify_int8_openvino(path, model, x, y))
    failures = _failures(r, meta.model_precision, int8_min_psnr)
    if failures:
        raise ExportError(f"{label}: verification failed: {'; '.join(failures)}")
    print(f"  {label} verified in {time.perf_counter() - t0:.1f} s")
    return r


def _verify_int8_openvino(path: Path, model: onnx.ModelProto, x: np.ndarray,
                          y: np.ndarray) -> dict:
    """The INT8 file's own checks: every convolution quantized and no normalisation, and the
    OpenVINO run (INT8 convolutions, read back from the compiled model) against PyTorch."""
    n, total = check_quantized(model)
    print(f"    graph: {n} of {total} convolutions INT8 (QDQ), normalisation float32")
    try:
        engine = Engine(path, provider="openvino", batch_size=len(x), precision="int8")
    except P2PError as e:
        if "not installed" in str(e):
            print(f"    openvino check skipped: {e}")
            return {}
        raise ExportError(f"{path.name}: openvino: {e}") from None
    with engine:
        alone = np.concatenate([engine.run(x[k:k + 1]) for k in range(len(x))])
        together = engine.run(x)
    r = {"max_abs_ov": float(np.abs(together - y).max()), "psnr_ov": psnr(together, y),
         "invariance_ov": float(np.abs(alone - together).max())}
    print(f"  openvino INT8 vs FP32 PyTorch, batch {len(x)}: max abs error "
          f"{r['max_abs_ov']:.3g}, PSNR {r['psnr_ov']:.1f} dB; batch invariance max diff "
          f"{r['invariance_ov']:.3g}")
    return r


def _failures(r: dict, precision: str, int8_min_psnr: float = INT8_MIN_PSNR) -> list[str]:
    bad = []
    min_psnr = {"fp16": FP16_MIN_PSNR, "int8": int8_min_psnr}.get(precision)
    for key, name in (("b1", "batch 1"), ("bn", f"batch {r['batch']}"),
                      ("dynamic", "dynamic size"), ("gpu", "FP16 emulated"),
                      ("ov", "openvino")):
        if f"psnr_{key}" not in r:
            continue
        if math.isnan(r[f"psnr_{key}"]) or not math.isfinite(r[f"max_abs_{key}"]):
            bad.append(f"{name}: output not finite (NaN or Inf)")  # no bound passes on it
            continue
        if min_psnr is not None and not r[f"psnr_{key}"] >= min_psnr:
            bad.append(f"{name} PSNR {r[f'psnr_{key}']:.1f} dB < {min_psnr} dB")
        if min_psnr is None and not r[f"max_abs_{key}"] <= FP32_MAX_ABS:
            bad.append(f"{name} max abs error {r[f'max_abs_{key}']:.3g} > {FP32_MAX_ABS}")
    for key in ("invariance", "invariance_ov"):
        if key in r and not r[key] <= INVARIANCE_TOL[precision]:
            bad.append(f"batch invariance {r[key]:.3g} > {INVARIANCE_TOL[precision]}")
    return bad
