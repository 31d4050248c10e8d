"""The project's typed errors: raised deep, turned into one clear line by ``p2p.cli``.

Every message names the file (or value) at fault and, where there is a closed set of
choices, lists what is allowed. No module outside ``cli/`` prints a traceback for these.
This module lives in ``runtime/`` because runtime is the bottom layer that every other
package may import (runtime itself imports no other p2p package and never torch).
"""

import re


class P2PError(Exception):
    """Base class: a user-facing problem with input, files or environment."""


class DataError(P2PError):
    """A dataset folder or image pair is missing, empty or malformed."""


class CheckpointError(P2PError):
    """A checkpoint is missing, corrupt, truncated, unsafe or not a p2p/pix2pix file."""


class ExportError(P2PError):
    """Export or its verification failed (checker, tolerance, batch invariance)."""


class ModelError(P2PError):
    """An ONNX model file is missing, unreadable, unsafe or lacks p2p metadata."""


class NonFiniteOutput(ModelError):
    """The model's output holds NaN or Inf: no image, score or check may be made from it."""


class ProviderError(P2PError):
    """An execution provider was requested but cannot run here (and says why)."""


class DownloadError(P2PError):
    """A download failed: server unreachable, an HTTP error, or a file that cannot be written."""


class HashMismatch(DownloadError):
    """A downloaded or imported file is not the one expected (its SHA-256 differs)."""


class ImageError(P2PError):
    """One image cannot be decoded or converted; the batch goes on without it."""


def choices(values) -> str:
    """'a|b|c' for error messages that list what is allowed."""
    return "|".join(str(v) for v in values)


_SEE_CAUSE = "See previous exception for details."  # rasterio's pointer to the GDAL error


def one_line(e: BaseException) -> str:
    """An exception as one line: its message's first line, or its type's name when the
    message is empty (``str(KeyError())`` is '' and ``''.splitlines()[0]`` would raise).
    A library exception whose message points at the exception it was raised ``from``
    (rasterio's "Read failed. See previous exception for details." from GDAL's error)
    carries that cause's line instead of the pointer, since the reason is there: "Read
    failed: tscene.tif, band 1: IReadBlock failed ..."; other chains (Pillow's "image file
    is truncated" from a struct.error) say enough on their own."""
    def first(x: BaseException) -> str:
        lines = str(x).strip().splitlines()
        return lines[0] if lines else type(x).__name__

    text, seen, cause = first(e), {id(e)}, e.__cause__
    if _SEE_CAUSE not in text:
        return text
    while cause is not None and id(cause) not in seen:  # each line once, no cycles
        seen.add(id(cause))
        why = first(cause)
        if why.rstrip(".") not in text:
            text = f"{text.replace(_SEE_CAUSE, '').strip().rstrip('.')}: {why}"
        cause = cause.__cause__
    return text


# A native library's source location, which some messages start with instead of the reason:
# OpenVINO's "Exception from src/inference/src/cpp/core.cpp:84:" and "Check 'x' failed at
# src/frontends/...:151:" lines.
_LOCATION = re.compile(r"(Exception from |Check '.*' failed at )\S+:\d+:?")


def reason(e: BaseException, limit: int = 300) -> str:
    """An exception's message as one line without native source locations: the lines that
    say why, joined ('Model wasn't fully converted. ... No conversion rule found for
    operations: Foo-28'), cut at ``limit`` characters; its type's name when nothing is left."""
    lines = [ln.strip() for ln in str(e).splitlines()]
    kept = [ln for ln in lines if ln and not _LOCATION.fullmatch(ln)]
    text = " ".join(kept) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
