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
          "nncf": "int8"}


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
