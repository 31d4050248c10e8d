"""What every command shares: typed errors become one clear line and a non-zero exit, a
missing optional dependency names the extra that brings it, and -h works everywhere."""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path

import click

from p2p.runtime.errors import P2PError

# Every command takes -h as well as --help (click's default is --help only).
CONTEXT = {"help_option_names": ["-h", "--help"]}

# The pyproject extra that installs each optional top-level module.
EXTRAS = {"torch": "train", "onnx": "train", "onnxscript": "train", "tensorboard": "train",
          "onnxruntime": "cpu", "openvino": "openvino", "cv2": "process",
          "starlette": "serve", "uvicorn": "serve", "prometheus_client": "serve",
          "nncf": "int8", "tifffile": "tiff", "av": "video", "rasterio": "geo"}


def handle_errors(fn):
    """Map ``P2PError`` to ``ClickException`` (exit 1, 'Error: <one line>', no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except P2PError as e:
            raise click.ClickException(str(e)) from None

    return wrapper


def missing_extra(command: str, e: ImportError) -> str | None:
    """'Error: <command> needs X: pip install 'p2p[extra]'' for an optional module that is
    not installed; None for anything else (a broken p2p module must stay a traceback)."""
    top = (e.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    return f"Error: {command} needs {top}, which is not installed: pip install 'p2p[{EXTRAS[top]}]'"


@contextlib.contextmanager
def requires(command: str):
    """Around a command's imports (and its run): a missing optional dependency exits 1 with
    one line naming the extra, at import time too, where click has not started yet."""
    try:
        yield
    except ImportError as e:
        line = missing_extra(command, e)
        if line is None:
            raise
        sys.exit(line)


# --- the options p2p-translate and p2p-serve share (one text, one default) -----------------

def model_option(fn):
    """``--model``: resolved by ``p2p.runtime.locate.pick_model`` in the command."""
    return click.option("--model", "-m", type=click.Path(path_type=Path), help=(
        "Exported .onnx model, a run or export folder (its fastest verified model), or the "
        "name of a model fetched with p2p-pretrained get [default: the newest FP32 model "
        "under runs/, said when used]."))(fn)


def engine_options(fn):
    """``--provider``, ``--threads``, ``--precision``: what ``Engine`` takes."""
    from p2p.runtime.engine import PROVIDERS
    from p2p.runtime.precision import PRECISIONS

    for option in reversed((
        click.option("--provider", type=click.Choice(PROVIDERS), default="auto",
                     show_default=True, help="Where the model runs; anything but auto fails "
                     "rather than fall back."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="CPU inference threads [default: physical cores]."),
        click.option("--precision", type=click.Choice(PRECISIONS), default="auto",
                     show_default=True, help="auto: an INT8 file runs INT8; a float file BF16 "
                     "on openvino where the CPU has AMX, the faster of FP32 and BF16 as "
                     "measured on the first start where it has AVX512_BF16 only, else FP32. "
                     "fp32: the exact path. A precision that cannot run here is an error, "
                     "never a substitute."),
    )):
        fn = option(fn)
    return fn


def web_options(fn):
    """``--web``, ``--web-precision``, ``--web-no-webgpu``: what ``export.web.WebConfig``
    takes, for p2p-export and p2p-pretrained get (one text, one default)."""
    from p2p.runtime.metadata import MODEL_PRECISIONS

    for option in reversed((
        click.option("--web", type=click.Path(path_type=Path, file_okay=False),
                     help="Also write a static page that runs the model in the browser "
                     "(onnxruntime-web) into this folder; try it with p2p-serve --web DIR."),
        click.option("--web-precision", type=click.Choice(MODEL_PRECISIONS),
                     help="--web: the export the page carries (fp16/int8 are exported for "
                     "it) [default: the smallest verified export]."),
        click.option("--web-no-webgpu", is_flag=True,
                     help="--web: leave out the WebGPU runtime (28.7 MB, over Cloudflare "
                     "Pages' 25 MiB file limit); the page runs on WASM."),
    )):
        fn = option(fn)
    return fn
