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

Speed choices (measured on a 2-core AVX-512 BF16 EPYC, see BENCHMARKS.md):
- the up-convolutions (ConvTranspose) are rewritten as sub-pixel convolutions at load time
  (``subpixel_deconvolutions``): OpenVINO has no BF16 transposed-convolution kernel, and
  this rewrite is what makes bf16 ~2x FP32 here instead of ~1.15x; FP32 is unchanged;
- one image per infer request, one request in flight per stream, streams = min(cores,
  batch size) with the cores split between them (the THROUGHPUT hint; one stream with every
  thread at batch size 1); each stream takes the next image when it is free (``run``), so a
  core slowed by another process does not hold the batch. As fast as a whole static batch on one stream (~2-5% faster in
  back-to-back runs), and it holds up when decode/encode threads or other processes take a
  core: independent single-thread streams wait on no barrier. One compiled model (batch 1,
  H and W as exported) then serves every batch size: no recompiles for the last, smaller
  batch, and activation memory for one image per stream;
- ``bf16`` runs convolutions on the AVX-512 BF16 units; OpenVINO quietly keeps FP32 on
  CPUs without them, so we check what the compiled model reports and refuse instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
from pathlib import Path

import numpy as np

from ..errors import ModelError, ProviderError, choices, reason
from ..host import physical_cores
from ..metadata import ModelMetadata
from ..modelfile import read_model_file
from ..precision import REGISTRY

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


def subpixel_deconvolutions(model) -> int:
    """Rewrite each ConvTranspose(kernel 4, stride 2, pad 1) as conv 2x2 -> 4 phases -> depth-to-space.

    Why: OpenVINO's CPU plugin has no BF16 kernel for ConvolutionBackpropData, so under the
    bf16 hint the U-Net's seven up-convolutions (over half of its 12.1 GFLOP) stay FP32 and
    BF16 barely pays. The same arithmetic as plain convolutions runs on the BF16 units.

    Output pixel (2m + a, 2n + b) of the transposed convolution only ever sees the 2x2 input
    window at rows (m - 1 + a, m + a), cols (n - 1 + b, n + b), through kernel taps
    rows (3 - a, 1 - a), cols (3 - b, 1 - b). So one convolution with a 2x2 kernel, padding 1
    and 4 * C_out channels (one group per phase (a, b)) computes every phase on an
    (H + 1) x (W + 1) grid; phase (a, b) is that grid shifted by (a, b); depth-to-space
    (blocks first) interleaves the phases. Exact up to float summation order.
    INT8 (QDQ) up-convolutions are rewritten only with fewer than ``INT8_LANES`` output
    channels (``_deconv_weights``): OpenVINO has INT8 deconvolution kernels, and rewriting
    all of them measured no faster; the last one (3 channels) is 4-5% of the model faster.
    Returns the number of layers rewritten; anything else is left as it is.
    """
    from openvino import opset13 as ops

    taps = ((3, 1), (2, 0))  # taps[a][t]: kernel row for phase a, window row t
    count = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "ConvolutionBackpropData" or node.get_input_size() != 2:
            continue
        attrs = node.get_attributes()
        if (attrs["strides"], attrs["pads_begin"], attrs["pads_end"], attrs["dilations"],
                attrs["output_padding"], attrs["auto_pad"]) != (
                [2, 2], [1, 1], [1, 1], [1, 1], [0, 0], "explicit"):
            continue
        found = _deconv_weights(node.input_value(1).get_node())
        if found is None:
            continue
        w, rebuild = found  # w: [C_in, C_out, 4, 4], float or INT8
        c_in, c_out = w.shape[:2]
        phases = np.empty((2, 2, c_out, c_in, 2, 2), w.dtype)
        for a in range(2):
            for b in range(2):
                phases[a, b] = w[:, :, taps[a], :][:, :, :, taps[b]].transpose(1, 0, 2, 3)
        grid = ops.convolution(node.input_value(0),
                               rebuild(phases.reshape(4 * c_out, c_in, 2, 2)),
                               strides=[1, 1], pads_begin=[1, 1], pads_end=[1, 1],
                               dilations=[1, 1])
        shifted = []
        for a in range(2):
            for b in range(2):
                group = slice(((a * 2 + b) * c_out), ((a * 2 + b + 1) * c_out))
                start = [group.start, a, b]
                stop = [group.stop, -1 if a == 0 else np.iinfo(np.int64).max,
                        -1 if b == 0 else np.iinfo(np.int64).max]
                shifted.append(ops.slice(grid, np.array(start, np.int64),
                                         np.array(stop, np.int64), np.ones(3, np.int64),
                                         np.array([1, 2, 3], np.int64)))
        out = ops.depth_to_space(ops.concat(shifted, 1), "blocks_first", 2)
        out.set_friendly_name(node.get_friendly_name() + "/subpixel")
        node.output(0).replace(out.output(0))
        count += 1
    if count:
        model.validate_nodes_and_infer_types()
    return count


INT8_LANES = 16  # output channels one VNNI instruction fills (32-bit lanes of a zmm register)


def _constant(node) -> np.ndarray | None:
    """The float32 data behind a chain of Reshape/Convert/Unsqueeze over a Constant, or None."""
    while node.get_type_name() in ("Reshape", "Convert", "Unsqueeze", "Squeeze"):
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Constant":
        return None
    return np.asarray(node.get_data(), np.float32)


def _deconv_weights(node):
    """(weights [C_in, C_out, 4, 4], rebuild) of an up-convolution that is worth rewriting,
    or None. Float weights are a Constant. INT8 weights (NNCF's QDQ file as OpenVINO reads
    it) are Constant(i8) -> Convert -> [Subtract(zero point)] -> Multiply(scale), zero point
    and scale per output channel (axis 1); the rewrite permutes the INT8 constant and tiles
    the scales, so the low-precision transformations still run the sub-pixel convolution in
    INT8 (exact: the same integer products). Only with < INT8_LANES output channels (issue
    21: the last up-convolution, 128 -> 3 channels, took 8.6% of INT8 time for 1.6% of the
    MACs on a Zen 4; as a sub-pixel convolution it has 12). ``rebuild(w2)`` makes the new
    weights for [4 * C_out, C_in, 2, 2] data."""
    from openvino import opset13 as ops

    if node.get_type_name() == "Constant":
        w = node.get_data()
        if w.ndim != 4 or list(w.shape[2:]) != [4, 4]:
            return None
        return w, ops.constant
    if node.get_type_name() != "Multiply":
        return None
    scale = _constant(node.input_value(1).get_node())
    inner = node.input_value(0).get_node()
    zero = None
    if inner.get_type_name() == "Subtract":
        zero = _constant(inner.input_value(1).get_node())
        if zero is None:
            return None
        inner = inner.input_value(0).get_node()
    if inner.get_type_name() != "Convert" or scale is None:
        return None
    q = inner.input_value(0).get_node()
    if q.get_type_name() != "Constant":
        return None
    w = q.get_data()
    if w.ndim != 4 or list(w.shape[2:]) != [4, 4] or w.dtype not in (np.int8, np.uint8):
        return None
    c_out = w.shape[1]
    if c_out >= INT8_LANES:
        return None

    def per_channel(v):  # a scalar or one value per output channel -> [4 * C_out, 1, 1, 1]
        v = v.reshape(-1)
        if v.size not in (1, c_out):
            return None
        return np.tile(np.broadcast_to(v, (c_out,)), 4).reshape(-1, 1, 1, 1).astype(np.float32)

    scale4 = per_channel(scale)
    zero4 = None if zero is None else per_channel(zero)
    if scale4 is None or (zero is not None and zero4 is None):
        return None

    def rebuild(data):
        x = ops.convert(ops.constant(data), np.float32)
        if zero4 is not None:
            x = ops.subtract(x, ops.constant(zero4))
        return ops.multiply(x, ops.constant(scale4))
    return w, rebuild



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
        # Plain synchronous requests, one Python thread per stream in ``run`` (no completion
        # callbacks: those run Python on OpenVINO's threads, which aborted the interpreter
        # when a session was collected).
        self._requests = [self.compiled.create_infer_request() for _ in range(self.streams)]
        self._lock = threading.Lock()  # one run at a time owns the requests

    @property
    def compiled_precision(self) -> str:
        """What the plugin really runs (f32 or bf16), read back from the compiled model."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def describe(self) -> str:
        threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        per = max(1, threads // self.streams)
        rewritten = (f", {self.subpixel_layers} up-convolutions as sub-pixel convolutions"
                     if self.subpixel_layers else "")
        return (f"openvino ({self.device}, {self.precision}, {self.streams} stream"
                f"{'s' if self.streams > 1 else ''} x {per} thread{'s' if per > 1 else ''}"
                f"{rewritten})")

    def check_size(self, h: int, w: int) -> None:
        """Any size the model's metadata allows runs here: nothing more to check."""

    def run(self, x: np.ndarray) -> np.ndarray:
        """Each stream's request takes the next chunk as soon as it is free (one Python
        thread per stream, ``infer`` releases the GIL). Not a fixed round robin: when another
        process takes a core, a fixed split waits on the slowed stream for its whole share
        (rounds of one batch varied 2x on a shared 2-core Xeon, issue 21); here the other
        stream takes the remaining images."""
        if x.ndim != 4:
            raise ValueError(f"expected an NCHW batch, got shape {x.shape}")
        rb = self.request_batch
        starts = list(range(0, len(x), rb))
        if not starts:
            return np.zeros((0, self.metadata.out_channels, *x.shape[2:]), np.float32)
        outs: list[np.ndarray | None] = [None] * len(starts)
        with self._lock:
            todo = iter(range(len(starts)))
            take = threading.Lock()
            errors: list[BaseException] = []

            def work(request):
                while not errors:
                    with take:
                        k = next(todo, None)
                    if k is None:
                        return
                    chunk = np.ascontiguousarray(x[starts[k]:starts[k] + rb], dtype=self._dtype)
                    n = len(chunk)
                    if n < rb:  # a fixed-batch model: pad the last request, drop it after
                        pad = np.zeros((rb - n, *chunk.shape[1:]), self._dtype)
                        chunk = np.concatenate([chunk, pad])
                    try:
                        request.infer({0: chunk}, share_inputs=True)
                    except RuntimeError as e:
                        errors.append(e)
                        return
                    # The request reuses its output buffer next time: copy it out.
                    outs[k] = np.array(request.get_output_tensor(0).data[:n], np.float32)

            workers = min(self.streams, len(starts))
            if workers == 1:
                work(self._requests[0])
            else:
                threads = [threading.Thread(target=work, args=(r,), daemon=True)
                           for r in self._requests[:workers]]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            if errors:
                raise ModelError(f"{self.path}: openvino failed on input {list(x.shape)}: "
                                 f"{reason(errors[0])}") from None
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def close(self) -> None:
        with self._lock:
            self._requests, self.compiled = [], None


def backend(provider: str, path: Path, metadata: ModelMetadata, options) -> OpenVINOSession:
    """``p2p.runtime.backends.create``'s branch for ``openvino``: an ``EngineOptions`` in,
    a backend out. ``options.precision`` ("fp32" | "bf16"; absent or None means fp32)."""
    assert provider == "openvino", provider
    precision = getattr(options, "precision", None) or "fp32"
    return OpenVINOSession(path, precision, options.threads, options.batch_size,
                           metadata=metadata)
