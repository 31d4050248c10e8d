"""OpenVINO backend: the fastest CPU path for the U-Net, behind the same surface as onnxruntime.

Why a separate backend and not onnxruntime's OpenVINO execution provider: on this class of
machine the ``onnxruntime-ep-openvino`` plugin registers but exposes no device, and
``onnxruntime-openvino`` is a separate onnxruntime build that conflicts with ``onnxruntime``
and ``onnxruntime-gpu`` (and runs FP32 only). The ``openvino`` runtime itself reads the very
same ONNX file, metadata included, so it installs beside either onnxruntime wheel as the
optional extra ``p2p[openvino]`` and needs neither torch nor onnxruntime.

    session = OpenVINOSession(path, precision="fp32" | "bf16", threads=None, batch_size=8)
    session.provider   # "openvino"
    session.metadata   # ModelMetadata read from the ONNX file's metadata_props
    session.run(x)     # NCHW float32 in [-1, 1], any batch size -> NCHW float32
    session.submit(x)  # the same, queued on the streams: a Future of the output

Speed choices (measured on a 2-core AVX-512 BF16 EPYC, see BENCHMARKS.md):
- the up-convolutions (ConvTranspose) are rewritten as sub-pixel convolutions at load time
  (``subpixel_deconvolutions``): OpenVINO has no BF16 transposed-convolution kernel, and
  this rewrite is what makes bf16 ~2x FP32 here instead of ~1.15x; FP32 is unchanged;
- one image per infer request, one request per stream, streams = min(cores, batch size)
  with the cores split between them (the THROUGHPUT hint; one stream with every thread at
  batch size 1). Each stream has a thread of its own that takes the next image from one
  queue (``submit``) as soon as it is free, across batches: a core slowed by another
  process does not hold a batch, and no stream waits at the end of a batch for the caller
  to write its outputs and gather the next (the pipeline keeps the next batch queued). As
  fast as a whole static batch on one stream in back-to-back runs, and it holds up when
  decode/encode threads or other processes take a core. One compiled model (batch 1, H
  and W as exported) then serves every batch size: no recompiles for the last, smaller
  batch, and activation memory for one image per stream;
- ``bf16`` runs convolutions on the AVX-512 BF16 units; OpenVINO quietly keeps FP32 on
  CPUs without them, so we check what the compiled model reports and refuse instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import queue
import sys
import threading
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from ..errors import ModelError, ProviderError, choices, reason
from ..host import physical_cores
from ..metadata import ModelMetadata
from ..modelfile import read_model_file
from ..precision import REGISTRY
from .ovrewrite import subpixel_deconvolutions  # noqa: F401  (public here too)

# What OpenVINO runs each precision under, from the one registry (p2p.runtime.precision):
# int8 is a QDQ file whose convolutions run INT8 (OpenVINO's low-precision transformations)
# and everything else under the f32 hint (p2p.runtime.precision checks the compiled layers).
_OV_PRECISION = {name: p.openvino for name, p in REGISTRY.items() if p.openvino}
PRECISIONS = tuple(_OV_PRECISION)


class _SignalStack(ctypes.Structure):  # Linux's stack_t
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int),
                ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def _signal_stack_kept():
    """Give the calling thread back its signal alternate stack after OpenVINO is done.

    The CPU plugin installs its own alternate stack when it creates an engine or a compiled
    model and puts back the one it saw when that model is destroyed. Two sessions destroyed
    in creation order (what garbage collection does) leave the thread pointing at the
    first one's freed stack, and the next signal that has a Python handler (SIGINT, or the
    SIGCHLD handler of torch's DataLoader) then kills the process with SIGSEGV. Restoring
    the stack right after creation means every later swap-back restores a live stack."""
    libc, saved = None, _SignalStack()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None)
            if libc.sigaltstack(None, ctypes.byref(saved)) != 0:
                libc = None
        except (OSError, AttributeError):
            libc = None
    try:
        yield
    finally:
        if libc is not None:
            libc.sigaltstack(ctypes.byref(saved), None)


def _openvino():
    try:
        import openvino
    except ImportError:
        raise ProviderError("openvino is not installed: pip install 'p2p[openvino]'") from None
    return openvino


class OpenVINOSession:
    """One OpenVINO model; also the ``Engine``'s backend interface (``p2p.runtime.backends``):
    ``provider``, ``fixed_batch``, ``describe()``, ``check_size(h, w)``, ``run(x)``, ``close()``.
    """

    provider = "openvino"

    def __init__(self, *args, **kwargs):
        with _signal_stack_kept():  # see there: a SIGSEGV on the next signal otherwise
            self._create(*args, **kwargs)

    def _create(self, path, precision: str = "fp32", threads: int | None = None,
                batch_size: int = 8, *, streams: int | None = None, device: str = "CPU",
                subpixel: bool = True, metadata: ModelMetadata | None = None):
        if precision not in PRECISIONS:
            raise ProviderError(f"provider openvino: precision {precision!r} is not one of "
                                f"{choices(PRECISIONS)}")
        for name, value in (("batch size", batch_size), ("threads", threads),
                            ("streams", streams)):
            if value is not None and value < 1:
                raise ProviderError(f"provider openvino: {name} must be >= 1, got {value}")
        self.path = Path(path)
        # The one model-file reader: its checks (external data inside the folder, names,
        # size) hold here too when this session is made without an Engine.
        metadata = metadata or read_model_file(self.path).metadata
        ov = _openvino()
        self.core = ov.Core()
        devices = self.core.available_devices
        if device not in devices:
            raise ProviderError(f"provider openvino: no {device} device here (openvino "
                                f"{ov.__version__} sees: {', '.join(devices) or 'none'})")
        if precision == "bf16":
            caps = self.core.get_property(device, "OPTIMIZATION_CAPABILITIES")
            if "BF16" not in caps:
                raise ProviderError(f"provider openvino: bf16 needs a {device} with native BF16 "
                                    f"(AVX512_BF16 or AMX), this one has no native BF16 "
                                    f"(capabilities: {', '.join(caps)}); use fp32")
        try:
            self.model = self.core.read_model(str(self.path))
        except Exception as e:  # OpenVINO raises RuntimeError with multi-line text
            raise ModelError(f"{self.path}: openvino cannot read it: {reason(e)}") from None
        self.metadata = metadata
        if len(self.model.inputs) != 1 or len(self.model.outputs) != 1:
            raise ModelError(f"{self.path}: expected one input and one output, got "
                             f"{len(self.model.inputs)} and {len(self.model.outputs)}")
        self.subpixel_layers = subpixel_deconvolutions(self.model) if subpixel else 0
        self.device, self.precision, self.threads = device, precision, threads
        shape = self.model.input(0).get_partial_shape()
        self.fixed_batch = shape[0].get_length() if shape[0].is_static else None
        self.batch_size = self.fixed_batch or batch_size
        # Each request carries one image (or the model's fixed batch); a run keeps one
        # request in flight per stream. H and W stay as exported (static, or dynamic for
        # dynamic-size models), so one compiled model serves every batch size and image size.
        self.request_batch = self.fixed_batch or 1
        cores = threads or physical_cores()
        per_run = -(-self.batch_size // self.request_batch)
        self.streams = streams or max(1, min(cores, per_run))
        config = {
            "PERFORMANCE_HINT": "THROUGHPUT" if self.streams > 1 else "LATENCY",
            "NUM_STREAMS": str(self.streams),
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        shape[0] = self.request_batch
        try:
            self.model.reshape({self.model.input(0).get_any_name(): shape})
            self.compiled = self.core.compile_model(self.model, device, config)
        except Exception as e:
            raise ModelError(f"{self.path}: openvino cannot compile it: {reason(e)}") from None
        got = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if got != _OV_PRECISION[precision]:  # never run another precision than asked
            raise ProviderError(f"provider openvino: {self.path.name} compiled for {got}, not "
                                f"the requested {precision}")
        self._dtype = self.model.input(0).get_element_type().to_dtype()
        # Plain synchronous requests, one Python thread per stream (``_serve``; no completion
        # callbacks: those run Python on OpenVINO's threads, which aborted the interpreter
        # when a session was collected). Threads start with the first run.
        self._requests = [self.compiled.create_infer_request() for _ in range(self.streams)]
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def compiled_precision(self) -> str:
        """What the plugin really runs (f32 or bf16), read back from the compiled model."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def describe(self) -> str:
        threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        per = max(1, threads // self.streams)
        n = self.subpixel_layers
        rewritten = ("" if not n else ", 1 up-convolution as a sub-pixel convolution" if n == 1
                     else f", {n} up-convolutions as sub-pixel convolutions")
        return (f"openvino ({self.device}, {self.precision}, {self.streams} stream"
                f"{'s' if self.streams > 1 else ''} x {per} thread{'s' if per > 1 else ''}"
                f"{rewritten})")

    def check_size(self, h: int, w: int) -> None:
        """Any size the model's metadata allows runs here: nothing more to check."""

    def run(self, x: np.ndarray) -> np.ndarray:
        """(n, C, H, W) in the model's input dtype -> (n, C_out, H, W) float32; ModelError
        naming the file and the input shape when OpenVINO fails."""
        return self.submit(x).result()

    def submit(self, x: np.ndarray) -> Future:
        """``run(x)`` queued on the streams (one request of ``request_batch`` images at a
        time each, first come first served, across calls): a Future of the output. ``x`` must
        not change until the Future is done (requests read it in place)."""
        if x.ndim != 4:
            raise ValueError(f"expected an NCHW batch, got shape {x.shape}")
        task = _Task(x, self.request_batch, self._dtype,
                     f"{self.path}: openvino failed on input {list(x.shape)}")
        if not task.left:
            task.future.set_result(np.zeros((0, self.metadata.out_channels, *x.shape[2:]),
                                            np.float32))
            return task.future
        with self._lock:
            if self.compiled is None:
                raise ProviderError(f"provider openvino: {self.path.name}: session closed")
            if not self._threads:
                self._threads = [threading.Thread(target=_serve, args=(self._queue, r),
                                                  name="p2p-openvino", daemon=True)
                                 for r in self._requests]
                for t in self._threads:
                    t.start()
            for k in range(task.left):
                self._queue.put((task, k))
        return task.future

    def close(self) -> None:
        """Let queued work finish, stop the stream threads, free the compiled model."""
        with self._lock:
            threads, self._threads = self._threads, []
            for _ in threads:
                self._queue.put(None)
        for t in threads:
            t.join()
        self._requests, self.compiled = [], None

    def __del__(self):  # the threads hold no reference to the session: stop them here
        try:
            for _ in self._threads:
                self._queue.put(None)
        except Exception:  # noqa: BLE001 - a half-made session
            pass


class _Task:
    """One ``submit``: its input split into requests, their outputs as they come, and the
    Future that gets them concatenated (or the first failure as a ModelError)."""

    def __init__(self, x: np.ndarray, rb: int, dtype, where: str):
        self.x, self.rb, self.dtype, self.where = x, rb, dtype, where
        self.left = -(-len(x) // rb)
        self.outs: list[np.ndarray | None] = [None] * self.left
        self.error: BaseException | None = None
        self.future: Future = Future()
        self.lock = threading.Lock()

    def chunk(self, k: int) -> tuple[np.ndarray, int]:
        chunk = np.ascontiguousarray(self.x[k * self.rb:(k + 1) * self.rb], dtype=self.dtype)
        n = len(chunk)
        if n < self.rb:  # a fixed-batch model: pad the last request, drop it after
            pad = np.zeros((self.rb - n, *chunk.shape[1:]), self.dtype)
            chunk = np.concatenate([chunk, pad])
        return chunk, n

    def done(self, k: int, out: np.ndarray | None, error: BaseException | None) -> None:
        with self.lock:
            self.outs[k] = out
            if error is not None and self.error is None:
                self.error = error
            self.left -= 1
            if self.left:
                return
        if self.error is not None:
            self.future.set_exception(ModelError(f"{self.where}: {reason(self.error)}"))
        else:
            self.future.set_result(self.outs[0] if len(self.outs) == 1
                                   else np.concatenate(self.outs))


def _serve(work: queue.SimpleQueue, request) -> None:
    """One stream's thread: run queued requests until None. A module function, not a
    method: the thread must not keep its session alive (``__del__`` stops it)."""
    while (item := work.get()) is not None:
        task, k = item
        if task.error is not None:  # an earlier request of this task failed: skip the rest
            task.done(k, None, None)
            continue
        try:
            chunk, n = task.chunk(k)
            request.infer({0: chunk}, share_inputs=True)
            # The request reuses its output buffer next time: copy it out.
            out = np.array(request.get_output_tensor(0).data[:n], np.float32)
        except Exception as e:  # noqa: BLE001 - the task's Future carries it
            task.done(k, None, e)
        else:
            task.done(k, out, None)


def backend(provider: str, path: Path, metadata: ModelMetadata, options) -> OpenVINOSession:
    """``p2p.runtime.backends.create``'s branch for ``openvino``: an ``EngineOptions`` in,
    a backend out. ``options.precision`` ("fp32" | "bf16"; absent or None means fp32)."""
    assert provider == "openvino", provider
    precision = getattr(options, "precision", None) or "fp32"
    return OpenVINOSession(path, precision, options.threads, options.batch_size,
                           metadata=metadata)
