"""The GPU side of the onnxruntime backend: option vocabulary, what onnxruntime said, and
install hints read from the installed wheel. Stateless helpers; ``ort.OrtBackend`` uses them.

Why each rule (onnxruntime-gpu 1.2x-1.3x, read from its sources and wheels):
- TensorRT EP options given to ``InferenceSession`` are parsed by the Python binding itself
  (onnxruntime/python/onnxruntime_pybind_state.cc, the TensorrtExecutionProvider branch of
  provider-option parsing), whose boolean keys accept only "True"/"true"/"False"/"false":
  "1" throws "The value for the key 'trt_fp16_enable' should be 'True' or 'False'", which
  ``InferenceSession`` prints to stdout before retrying on CUDA. CUDA EP options go through
  the generic provider-options parser (CUDAExecutionProviderInfo::FromProviderOptions), where
  "1"/"0" are the documented values.
- ``onnxruntime.preload_dlls()`` and the retry banner use ``print()``; the providers' load
  errors go to fd 2 through onnxruntime's logger. Both are captured and shown on failure only.
- The wheel's CUDA major is ``onnxruntime.capi.build_and_package_info.cuda_version``; the
  TensorRT major its EP loads is the ``libnvinfer.so.N`` its provider library names
  (``libonnxruntime_providers_tensorrt.so``; 10 for every 1.2x/1.3x build).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

TRT_MAJOR_DEFAULT = 10  # libnvinfer.so.10: onnxruntime-gpu 1.18 to 1.3x


def trt_flag(value: bool) -> str:
    """A TensorRT EP boolean in the vocabulary onnxruntime's Python binding accepts
    (onnxruntime_pybind_state.cc: only "True"/"true"/"False"/"false")."""
    return "True" if value else "False"


@contextmanager
def captured_output():
    """Collect everything written to stdout and stderr inside the block, both by Python
    (``print``, even when ``sys.stdout`` is not fd 1) and by native code (fd 1 and 2).
    Yields a list that holds the text once the block ends. Process-wide (file descriptors,
    ``sys.stdout``): used while a session is created, before any worker thread prints."""
    box: list[str] = []
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = (os.dup(1), os.dup(2))
    py_out, py_err = io.StringIO(), io.StringIO()
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 1)
        os.dup2(buf.fileno(), 2)
        try:
            with contextlib.redirect_stdout(py_out), contextlib.redirect_stderr(py_err):
                yield box
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            buf.seek(0)
            box.append(py_out.getvalue() + py_err.getvalue()
                       + buf.read().decode(errors="replace"))


def onnxruntime_said(log: str, limit: int = 3) -> str:
    """The lines of onnxruntime's captured output that say what failed (its errors and
    "Failed to ..." warnings), last ``limit`` of them, joined with " | "; "" when none."""
    lines = []
    for line in log.splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()  # preload_dlls colours warnings
        if not re.search(r"error|fail|not assigned|require", line, re.IGNORECASE):
            continue
        # "<time> [E:onnxruntime:Default, file.cc:123 Func] /src/file.cc:45 Sig [ONNXRuntimeError]
        # : 1 : FAIL : <message>": keep the message.
        line = re.sub(r"^.*?\[[EWIV]:onnxruntime:[^\]]*\]\s*", "", line)
        line = re.sub(r"^.*\[ONNXRuntimeError\] : \d+ : \w+ : ", "", line)[:300]
        if line not in lines:
            lines.append(line)
    return " | ".join(lines[-limit:])


def wheel_cuda_major(ort) -> int | None:
    """The CUDA major the installed onnxruntime wheel was built with (None: a CPU build)."""
    try:
        info = importlib.import_module(ort.__name__ + ".capi.build_and_package_info")
        return int(str(getattr(info, "cuda_version", "")).split(".")[0])
    except (ImportError, ValueError):
        return None


def trt_major(ort) -> int:
    """The libnvinfer major the wheel's TensorRT EP library links against."""
    lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_tensorrt.so"
    try:
        found = re.search(rb"libnvinfer\.so\.(\d+)", lib.read_bytes())  # its DT_NEEDED name
    except OSError:
        return TRT_MAJOR_DEFAULT
    return int(found.group(1)) if found else TRT_MAJOR_DEFAULT


def install_hint(ort, provider: str) -> str:
    """What to install for ``provider`` with this wheel, from the wheel's own build info."""
    cuda = wheel_cuda_major(ort)
    if cuda is None:
        return (f"this onnxruntime {ort.__version__} has no CUDA build info (not an "
                "onnxruntime-gpu wheel): pip uninstall onnxruntime && pip install 'p2p[gpu]'")
    cu = f"CUDA {cuda}"
    hint = (f"onnxruntime-gpu {ort.__version__} is a {cu} build: it needs an NVIDIA driver "
            f"for {cu}, the {cu}.x and cuDNN 9 libraries (pip install "
            f"'onnxruntime-gpu[cuda,cudnn]', or put them on LD_LIBRARY_PATH)")
    if provider == "tensorrt":
        n = trt_major(ort)
        hint = (f"its TensorRT EP loads libnvinfer.so.{n}: pip install "
                f"'tensorrt-cu{cuda}>={n},<{n + 1}' "
                f"(or TensorRT {n}.x on LD_LIBRARY_PATH); {hint}")
    return hint


def tensorrt_version() -> str:
    """TensorRT's version; importing the pip wheel also loads its libraries, so call this
    after ``onnxruntime.preload_dlls()`` has loaded CUDA (TensorRT links against it)."""
    try:
        import tensorrt  # the pip wheel that onnxruntime-gpu can use

        return tensorrt.__version__
    except Exception:  # ImportError, or its own library load failing
        pass
    import ctypes

    for lib in ("libnvinfer.so.10", "libnvinfer.so"):
        try:
            v = ctypes.CDLL(lib).getInferLibVersion()
            return f"{v // 10000}.{v // 100 % 100}.{v % 100}" if v > 10000 else str(v)
        except (OSError, AttributeError):
            continue
    return "unknown"
