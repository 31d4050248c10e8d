"""``p2p-export``: a checkpoint's generator as a verified, self-describing ONNX model."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import click

from p2p.cli.common import CONTEXT, handle_errors, requires, web_options
from p2p.runtime.metadata import COLOR_SPACES, DIRECTIONS, NORM_MODES

with requires("p2p-export"):  # a deployment install has no torch: say which extra brings it
    from p2p.export.load import Overrides
    from p2p.export.onnx import MIN_OPSET, ExportConfig, main as export
    from p2p.trainer.models import NORMS
    from p2p.export.web import WebConfig, exports_beside, write_site


@click.command(context_settings=CONTEXT)
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="The FP32 model file (.onnx appended when missing).  "
                   "[default: <run>/export/generator.onnx]")
@click.option("--fp16", is_flag=True,
              help="Also write <output>.fp16.onnx: FP16 weights and activations, FP32 norm "
                   "and output, FP16 input.")
@click.option("--int8", is_flag=True,
              help="Also write <output>.int8.onnx: INT8 convolutions (NNCF post-training "
                   "quantization, QDQ ONNX for OpenVINO and onnxruntime), float normalisation; "
                   "refused below 40 dB PSNR against FP32.")
@click.option("--calibration", type=click.Path(path_type=Path, file_okay=False),
              help="--int8: images to calibrate on (A|B pairs or inputs; recursive) "
                   "[default: the run's training images].")
@click.option("--calibration-images", type=click.IntRange(1, 300), default=100,
              show_default=True, help="--int8: use at most this many calibration images.")
@click.option("--opset", type=click.IntRange(MIN_OPSET), default=17, show_default=True,
              help="ONNX opset of the written file (checked).")
@click.option("--norm-mode", type=click.Choice(NORM_MODES), default="per-image",
              show_default=True,
              help="per-image: each image normalised with its own statistics and the learned "
                   "gamma/beta (the paper's test-time behaviour, batch-invariant); running: "
                   "BatchNorm running statistics folded into the convolutions.")
@click.option("--dynamic-size", is_flag=True,
              help="Make H and W dynamic (multiples of 2^depth) instead of the training size.")
@click.option("--triton", type=click.Path(path_type=Path, file_okay=False),
              help="Also write an NVIDIA Triton model repository into this folder.")
@click.option("--triton-name", help="Triton model name.  [default: the run folder's name]")
@click.option("--triton-max-batch", type=click.IntRange(1), default=16, show_default=True)
@web_options
@click.option("--no-verify", is_flag=True, help="Skip the checks (not recommended).")
@click.option("--quiet", "-q", is_flag=True,
              help="Print nothing but errors (the steps and checks are not shown).")
@click.option("--runs-dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("runs"), show_default=True,
              help="Where to look for the newest run when SOURCE is omitted.")
@click.option("--ngf", type=click.IntRange(1), help="junyanz files: generator width [64].")
@click.option("--norm", type=click.Choice(NORMS), help="junyanz files: norm layer [batch].")
@click.option("--image-size", type=click.IntRange(32), help="junyanz files: size [256].")
@click.option("--in-channels", type=click.IntRange(1), help="junyanz files: [3].")
@click.option("--out-channels", type=click.IntRange(1), help="junyanz files: [3].")
@click.option("--direction", type=click.Choice(DIRECTIONS), help="junyanz files: [AtoB].")
@click.option("--color-space", type=click.Choice(COLOR_SPACES), help="junyanz files: [rgb].")
@handle_errors
def main(source, output, fp16, int8, calibration, calibration_images, opset, norm_mode,
         dynamic_size, triton, triton_name, triton_max_batch, web, web_precision, web_no_webgpu,
         no_verify, quiet, runs_dir, ngf,
         norm, image_size, in_channels,
         out_channels, direction, color_space):
    """Export the generator of SOURCE (a p2p checkpoint, a run folder, or a
    pytorch-CycleGAN-and-pix2pix *_net_G.pth) to ONNX and verify it.

    Without SOURCE: the newest run under --runs-dir. Nothing is written unless every check
    passes. The architecture flags describe junyanz files, which do not record it; for a
    p2p checkpoint they may only repeat what it records.

    With --web, SOURCE may also be an exported .onnx file: its page is written, nothing is
    exported again.
    """
    web_cfg = web and WebConfig(output=web, precision=web_precision, webgpu=not web_no_webgpu,
                                progress=not quiet)
    if web and source is not None and source.suffix == ".onnx":
        write_site([source], web_cfg, say=lambda msg: None if quiet else click.echo(msg))
        return
    fp16 = fp16 or web_precision == "fp16"
    int8 = int8 or web_precision == "int8"
    cfg = ExportConfig(
        source=source, runs_dir=runs_dir, output=output, fp16=fp16, int8=int8,
        calibration=calibration, calibration_images=calibration_images, opset=opset,
        norm_mode=norm_mode, dynamic_size=dynamic_size, triton=triton, triton_name=triton_name,
        triton_max_batch=triton_max_batch, verify=not no_verify,
        overrides=Overrides(ngf=ngf, norm=norm, image_size=image_size, in_channels=in_channels,
                            out_channels=out_channels, direction=direction,
                            color_space=color_space))
    # The exporter reports its steps on stdout; errors leave as exceptions, so --quiet can
    # drop the stream whole without hiding a failure.
    quieted = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
    with requires("p2p-export"), quieted:  # onnxscript, onnxruntime: imported on the way
        written = export(cfg)
    if web:
        write_site(exports_beside(written[0]), web_cfg,
                   say=lambda msg: None if quiet else click.echo(msg))
