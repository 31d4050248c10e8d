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
          "starlette": "serve", "uvicorn": "serve"}


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


def default_model(runs: Path = Path("runs")) -> tuple[Path, str]:
    """The model p2p-translate and p2p-serve use without --model, and the rule that picked
    it, to be printed. The rule: exported models (runs/*/export/*.onnx) before any other
    *.onnx under runs/; FP32 before FP16 (an FP16 model is exported beside its FP32 twin and
    is newer, but it is the faster, less exact choice, which the user makes by name); then
    the newest. Raises ModelError when there is none."""
    from p2p.runtime.engine import read_metadata  # numpy + protobuf reading, no onnxruntime
    from p2p.runtime.errors import ModelError

    # Hidden files are never models: a killed p2p-export leaves its half-written temp file
    # as .generator.onnx.<pid>.<random>.tmp.onnx, and pathlib's glob does not skip dot-files.
    def visible(paths):
        return [p for p in paths if not p.name.startswith(".")]

    found = visible(runs.glob("*/export/*.onnx")) or visible(runs.glob("**/*.onnx"))
    if not found:
        raise ModelError(f"no --model given and no *.onnx under {runs}/; export one with "
                         "p2p-export or pass --model PATH")

    def precision(p: Path) -> str:
        try:
            return read_metadata(p).input_dtype
        except P2PError:
            return "unknown"  # not a p2p model: Engine says why if it is picked

    fp32 = [p for p in found if precision(p) == "float32"]
    newest = max(fp32 or found, key=lambda p: p.stat().st_mtime)
    rule = (f"the newest FP32 model under {runs}/" if fp32 else
            f"the newest model under {runs}/ (there is no FP32 one)")
    return newest, f"no --model: using {newest}, {rule}; pass --model to choose"
