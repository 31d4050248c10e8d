"""Checkpoint -> inference graph -> ONNX (FP32, optionally FP16) -> checks -> files.

The trap this module exists for is test-time semantics. The paper normalises every test
image with its own statistics (BatchNorm in train mode at batch 1) and keeps dropout on, so
a naive eval-mode export gives different images, and a train-mode BatchNorm export makes an
image's output depend on the rest of its batch. The exported graph therefore makes both
explicit:
- dropout is removed (deterministic: the same input always gives the same image);
- ``per-image`` (default): each BatchNorm becomes an InstanceNormalization that carries the
  BatchNorm's learned gamma/beta and eps, i.e. exactly train-mode BN at batch 1, now
  batch-invariant by construction;
- ``running``: eval-mode BatchNorm with the running statistics, folded into the preceding
  convolution (what a deployment that wants the statistics of the training set uses).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import re
import time
import warnings
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import onnx
import torch
from onnx import helper
from torch import nn

from p2p.runtime import files
from p2p.runtime.errors import ExportError, choices, one_line
from p2p.runtime.modelfile import EXPORT_NAME, read_exports
from p2p.runtime.metadata import NATURAL_RANGE, NORM_MODES, ModelMetadata

from .fp16 import to_fp16
from .load import Loaded, Overrides, load

INPUT, OUTPUT = "input", "output"
MIN_OPSET = 16  # torch's exporter builds opset 18 and converts down; below 16 it cannot


@dataclass(frozen=True)
class ExportConfig:
    source: Path | None = None  # checkpoint file or run folder; None: newest run in runs_dir
    runs_dir: Path = Path("runs")
    output: Path | None = None  # None: <run>/export/generator.onnx
    fp16: bool = False  # also write <output stem>.fp16.onnx
    int8: bool = False  # also write <output stem>.int8.onnx (NNCF post-training quantization)
    calibration: Path | None = None  # int8 calibration images; None: the run's training inputs
    calibration_images: int = 100  # at most this many (int8.MAX_CALIBRATION)
    int8_min_psnr: float = 40.0  # dB against FP32 PyTorch, below which the INT8 file is refused
    opset: int = 17
    norm_mode: str = "per-image"
    dynamic_size: bool = False
    triton: Path | None = None  # model repository folder
    triton_name: str | None = None  # None: the run folder's name
    triton_max_batch: int = 16
    verify: bool = True
    val_images: int = 4  # the batch >= 4 check
    overrides: Overrides = field(default_factory=Overrides)
    source_url: str = ""  # recorded in the metadata: where the checkpoint was downloaded from


# --- the inference graph ---------------------------------------------------------------

def inference_graph(generator: nn.Module, norm: str, norm_mode: str) -> nn.Module:
    """A copy of the generator with dropout removed and normalisation made explicit."""
    if norm_mode not in NORM_MODES:
        raise ExportError(f"norm mode {norm_mode!r} is not one of {choices(NORM_MODES)}")
    if norm == "instance" and norm_mode == "running":
        raise ExportError("--norm-mode running needs BatchNorm running statistics, but this "
                          "generator uses instance norm (already per-image); use per-image")
    graph = copy.deepcopy(generator).eval()
    for seq in [m for m in graph.modules() if isinstance(m, nn.Sequential)]:
        for i, layer in enumerate(seq):
            if isinstance(layer, nn.Dropout):
                seq[i] = nn.Identity()
            elif isinstance(layer, nn.BatchNorm2d) and norm_mode == "per-image":
                seq[i] = per_image_norm(layer)
            elif isinstance(layer, nn.BatchNorm2d):
                if i == 0 or not isinstance(seq[i - 1], (nn.Conv2d, nn.ConvTranspose2d)):
                    raise ExportError("cannot fold a BatchNorm that does not follow a convolution")
                seq[i - 1], seq[i] = fold_batchnorm(seq[i - 1], layer), nn.Identity()
    return graph


def per_image_norm(bn: nn.BatchNorm2d) -> nn.InstanceNorm2d:
    """Train-mode BN at batch 1 == instance norm with BN's gamma, beta and eps.

    Both use the biased variance over H x W; ONNX gets one InstanceNormalization node.
    """
    norm = nn.InstanceNorm2d(bn.num_features, eps=bn.eps, affine=True,
                             track_running_stats=False)
    with torch.no_grad():
        norm.weight.copy_(bn.weight)
        norm.bias.copy_(bn.bias)
    return norm


def fold_batchnorm(conv: nn.Module, bn: nn.BatchNorm2d) -> nn.Module:
    """conv then eval-mode BN == one conv with scaled weights and a shifted bias."""
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.double() - bn.running_mean.double() * scale
        w = conv.weight.double()
        # Conv2d weights are (out, in, kh, kw); ConvTranspose2d weights are (in, out, kh, kw).
        axis = 1 if isinstance(conv, nn.ConvTranspose2d) else 0
        shape = [1, 1, 1, 1]
        shape[axis] = -1
        fused.weight = nn.Parameter((w * scale.view(shape)).float())
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        fused.bias = nn.Parameter((bias * scale + shift).float())
    return fused


@contextlib.contextmanager
def _quiet():
    """torch.onnx and onnxscript narrate every step (prints, log lines, warnings); p2p-export
    prints its own summary, so silence them unless something fails."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")
    levels = {n: logging.getLogger(n).level for n in names}
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def export_graph(graph: nn.Module, loaded: Loaded, opset: int,
                 dynamic_size: bool) -> onnx.ModelProto:
    """torch.onnx (dynamo) export with a dynamic batch axis (and H, W with dynamic_size).

    Why the dynamo exporter: it is torch's default and maintained path (the TorchScript one
    is deprecated since torch 2.9), both verify equally here, and its graph is clean (no
    Identity nodes). It builds opset 18 and converts down; when it cannot, it silently keeps
    18, so the opset of the result is checked against the request.
    """
    cfg, multiple = loaded.model, 2 ** loaded.model.num_downs
    # Trace with 2 on every dynamic axis: torch.export specialises axes of size 0/1.
    side = 2 * multiple if dynamic_size else cfg.image_size
    x = torch.randn(2, cfg.in_channels, side, side)
    shapes = {0: torch.export.Dim("batch", min=1)}
    if dynamic_size:
        shapes[2] = torch.export.Dim("h", min=1) * multiple
        shapes[3] = torch.export.Dim("w", min=1) * multiple
    try:
        with _quiet():
            program = torch.onnx.export(graph, (x,), None, dynamo=True, opset_version=opset,
                                        input_names=[INPUT], output_names=[OUTPUT],
                                        dynamic_shapes=(shapes,), external_data=False,
                                        optimize=True, verbose=False)
        model = program.model_proto
    except Exception as e:  # the exporter raises many untyped errors
        raise ExportError(f"torch.onnx export failed: {one_line(e)[:300]}") from None
    got = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise ExportError(f"asked for opset {opset} but the exporter produced opset {got}; "
                          f"use --opset {MIN_OPSET} or newer")
    return model


# --- metadata and files ------------------------------------------------------------------

def metadata(loaded: Loaded, norm_mode: str, dynamic_size: bool, fp16: bool,
             source_url: str = "", int8=None, verified: bool = True) -> ModelMetadata:
    """The file's self-description; ``int8``: the ``export.int8.Calibration`` of an INT8 file."""
    try:
        p2p_version = version("p2p")
    except PackageNotFoundError:
        p2p_version = "unknown"
    cfg = loaded.model
    return ModelMetadata(
        direction=loaded.direction, image_size=cfg.image_size,
        size_multiple=2 ** cfg.num_downs, dynamic_size=dynamic_size,
        color_space=loaded.color_space, in_channels=cfg.in_channels,
        out_channels=cfg.out_channels, norm_mode=norm_mode,
        input_dtype="float16" if fp16 else "float32", output_dtype="float32",
        input_name=INPUT, output_name=OUTPUT, training_step=loaded.step,
        checkpoint_sha256=loaded.sha256, source=loaded.source, source_url=source_url,
        p2p_version=p2p_version, precision="int8" if int8 else "fp16" if fp16 else "fp32",
        calibration_images=int8.count if int8 else 0,
        calibration_sha256=int8.sha256 if int8 else "", verified=verified,
        input_depth=loaded.input_depth, input_range=NATURAL_RANGE[loaded.input_depth],
        output_depth=loaded.output_depth, output_range=NATURAL_RANGE[loaded.output_depth])


def with_metadata(model: onnx.ModelProto, meta: ModelMetadata) -> onnx.ModelProto:
    props = {p.key: p.value for p in model.metadata_props}
    helper.set_model_props(model, {**props, **meta.to_props()})
    model.doc_string = (f"pix2pix generator ({meta.direction}, {meta.color_space}, "
                        f"{meta.norm_mode} norm, dropout removed) exported by p2p "
                        f"{meta.p2p_version}")
    return model


def default_output(loaded: Loaded) -> Path:
    return loaded.run_dir / "export" / EXPORT_NAME


def model_path(output: Path) -> Path:
    """--output as a model file name: ``.onnx`` appended where it has another or no
    extension (``runs/tinydyn`` -> ``runs/tinydyn.onnx``, and ``runs/tinydyn.int8.onnx``
    beside it), since the FP16/INT8 files are named from it and every command finds
    models by that extension."""
    return output if output.suffix.lower() == ".onnx" else output.with_name(output.name + ".onnx")


def fp16_path(output: Path) -> Path:
    from p2p.runtime.precision import export_path

    return export_path(output, "fp16")


def triton_name(cfg: ExportConfig, loaded: Loaded) -> str:
    name = cfg.triton_name or re.sub(r"[^A-Za-z0-9_.-]", "_", loaded.run_dir.resolve().name)
    return name or "pix2pix"


def int8_model(cfg: ExportConfig, loaded: Loaded, graph: nn.Module, fp32: onnx.ModelProto,
               out: Path, metas: dict) -> dict:
    """{<output stem>.int8.onnx: the quantized model}; its metadata goes into ``metas``."""
    from . import int8

    if not 1 <= cfg.calibration_images <= int8.MAX_CALIBRATION:
        raise ExportError(f"--calibration-images {cfg.calibration_images} is outside "
                          f"1..{int8.MAX_CALIBRATION}")
    if cfg.calibration:  # the user's images: split as p2p-translate would split them
        folder, split = cfg.calibration, "auto"
    else:  # the run's training inputs, their input half exactly as the trainer took it
        run = int8.default_calibration(loaded)
        folder, split = run.train, run.split
    path = int8.int8_path(out)
    base = metas[out]
    t = time.perf_counter()
    calib = int8.load_calibration(folder, base, cfg.calibration_images, split)
    source = fp32
    if int8.SUBPIXEL:  # the other graph form, kept measurable (see export/int8.py)
        sub = copy.deepcopy(graph)
        int8.subpixel(sub)
        source = export_graph(sub, loaded, cfg.opset, cfg.dynamic_size)
    quantized = int8.quantize(source, calib, INPUT)
    metas[path] = metadata(loaded, cfg.norm_mode, cfg.dynamic_size, fp16=False,
                           source_url=cfg.source_url, int8=calib,
                           verified=cfg.verify)
    print(f"int8: NNCF post-training quantization of every convolution, calibrated on "
          f"{calib.count} images from {folder} (sha256 {calib.sha256[:12]}...) in "
          f"{time.perf_counter() - t:.1f} s; normalisation kept in float32")
    return {path: with_metadata(quantized, metas[path])}


# --- the stage ---------------------------------------------------------------------------

def stale_siblings(out: Path, sha256: str) -> list[str]:
    """The p2p exports beside ``out`` made from another checkpoint than ``sha256`` (an
    FP32-only export after an earlier ``--fp16 --int8`` leaves those files older), as
    'name (step N)'."""
    return [f"{path.name} (step {meta.training_step})"
            for path, meta in read_exports(out.parent).items()
            if path != out and meta.checkpoint_sha256 and meta.checkpoint_sha256 != sha256]


def main(cfg: ExportConfig) -> list[Path]:
    """Export, verify, then publish every file that passed; ExportError (after publishing
    those) naming each file that did not and why. A failure before the checks, or of every
    file, leaves no new file."""
    from . import triton, verify  # verify imports onnxruntime: only when needed

    if not MIN_OPSET <= cfg.opset <= onnx.defs.onnx_opset_version():
        raise ExportError(f"opset {cfg.opset} is outside {MIN_OPSET}.."
                          f"{onnx.defs.onnx_opset_version()}")
    t0 = time.perf_counter()
    loaded = load(cfg.source, cfg.overrides, cfg.runs_dir)
    mc = loaded.model
    print(f"checkpoint {loaded.path} ({loaded.source}, step {loaded.step}, "
          f"sha256 {loaded.sha256[:12]}...)")
    print(f"generator: U-Net-{mc.image_size} ngf={mc.ngf} norm={mc.norm} "
          f"{mc.in_channels}->{mc.out_channels} channels, {loaded.direction}, "
          f"{loaded.color_space}; norm mode {cfg.norm_mode}, dropout removed")
    graph = inference_graph(loaded.generator, mc.norm, cfg.norm_mode)
    fp32 = export_graph(graph, loaded, cfg.opset, cfg.dynamic_size)
    out = model_path(cfg.output) if cfg.output else default_output(loaded)
    metas = {out: metadata(loaded, cfg.norm_mode, cfg.dynamic_size, fp16=False,
                           source_url=cfg.source_url, verified=cfg.verify)}
    models = {out: with_metadata(fp32, metas[out])}
    failed: dict[Path, str] = {}  # what was asked for and is not written, with why
    if cfg.fp16:
        metas[fp16_path(out)] = metadata(loaded, cfg.norm_mode, cfg.dynamic_size, fp16=True,
                                         source_url=cfg.source_url, verified=cfg.verify)
        models[fp16_path(out)] = with_metadata(to_fp16(fp32), metas[fp16_path(out)])
    if cfg.int8:
        try:
            models.update(int8_model(cfg, loaded, graph, fp32, out, metas))
        except ExportError as e:  # the float files are still worth writing
            from .int8 import int8_path

            failed[int8_path(out)] = f"{int8_path(out).name}: {e}"
            print(f"{int8_path(out).name}: not made: {e}")
    print(f"exported opset {cfg.opset} with torch.onnx (dynamo) in "
          f"{time.perf_counter() - t0:.1f} s")

    temps: dict[Path, Path] = {}
    new_dirs = [d for d in {p.parent for p in models} if not d.exists()]
    if out.parent.is_dir():  # a killed export's temps, whichever files it was writing
        files.remove_stale_temps(out.parent)
    published: list[Path] = []
    try:
        for final, model in models.items():
            # The runtime's one atomic writer: umask's mode (not mkstemp's 0600), pid in the
            # name so a killed export's temp is removed by the next one; ".onnx" kept last.
            temps[final] = files.stage(final, keep_suffix=True)
            try:
                onnx.save_model(model, temps[final])
            except OSError as e:  # a full disk: nothing is published
                raise ExportError(f"{final}: cannot write: {e.strerror or e}; nothing was "
                                  "written") from None
        if cfg.verify:
            inputs = verify.Inputs.build(loaded, metas[out], cfg.val_images)
            refs = verify.References(loaded.generator, cfg.norm_mode, inputs)
            for final, tmp in temps.items():
                try:
                    verify.verify(tmp, final.name, refs, metas[final], cfg.int8_min_psnr)
                except ExportError as e:  # each file stands on its own checks
                    failed[final] = str(e)
                    print(f"{final.name}: NOT verified: {e}")
        else:
            print("verification skipped (--no-verify): the files are unchecked")
        for final, tmp in temps.items():
            if final in failed:
                continue
            files.publish(tmp, final)  # each file atomically: whole or absent
            published.append(final)
            print(f"wrote {final} ({final.stat().st_size / 1e6:.1f} MB)")
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        for d in new_dirs if not published else []:
            with contextlib.suppress(OSError):  # only if empty: ours, and nothing else there
                d.rmdir()
    written = list(published)
    for name in stale_siblings(out, loaded.sha256):
        print(f"note: {name} beside it was exported from another checkpoint: p2p-translate "
              "passes it over; export again with the flag that made it (--fp16, --int8) to "
              "refresh it")
    if cfg.triton and published:
        name = triton_name(cfg, loaded)
        for final in published:
            precision = metas[final].model_precision
            if precision == "int8":  # the repository is for GPUs (KIND_GPU + TensorRT)
                print(f"Triton: {final.name} not added (an INT8 export for CPUs)")
                continue
            model_name = name + ("" if precision == "fp32" else "_" + precision)
            written += triton.write_model(cfg.triton, model_name, final, metas[final],
                                          cfg.triton_max_batch)
        print(f"Triton model repository: {cfg.triton}")
    if failed:  # asked for and not written: the command has not done what it was asked
        wrote = ", ".join(p.name for p in published) or "nothing"
        raise ExportError(f"not written: {'; '.join(failed.values())} (wrote {wrote})")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return written
