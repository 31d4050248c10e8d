"""``Engine``: one inference session for an exported p2p model.

The public surface is the contract that ``p2p.export`` (validation), ``p2p-translate``,
``p2p-serve`` and the benchmarks use:

    engine = Engine(path, provider="auto", batch_size=8, threads=None, precision="auto")
    engine.metadata   # ModelMetadata read from the file
    engine.provider   # the provider that actually runs ("cpu", "cuda", ...), never a wish
    engine.precision  # what runs ("fp32", "bf16", "int8", "fp16"); engine.choice.why says why
                      # (the rule: p2p.runtime.precision)
    engine.run(x)     # NCHW float32 in [-1, 1], any batch size -> NCHW float32 in [-1, 1]

Everything about the model (names, sizes, dtype, colour space) comes from its metadata. The
session itself lives in a backend (``p2p.runtime.backends``): onnxruntime today for cpu, cuda
and tensorrt; a second backend (OpenVINO) plugs in behind the same three methods. A provider
that was asked for and cannot run is a ``ProviderError`` that says why: never a silent CPU run.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError, ProviderError, choices
from .metadata import ModelMetadata

PROVIDERS = ("auto", "cpu", "cuda", "tensorrt", "openvino")


@dataclass(frozen=True)
class EngineOptions:
    """What a backend needs besides the model; one object so a new backend needs no new plumbing."""

    batch_size: int = 8
    threads: int | None = None  # CPU intra-op threads; None = physical cores
    cache_dir: Path | None = None  # None = $P2P_CACHE or ~/.cache/p2p
    fp16: bool | None = None  # TensorRT precision; None = FP16 (pix2pix's tanh output tolerates it)
    device_id: int = 0
    cuda_graphs: bool = False  # cuda only, fixed-size models only; unmeasured, so opt-in
    optimized_cache: bool = True  # cpu: reuse onnxruntime's optimised graph from the cache
    # What the backend runs, from p2p.runtime.precision.choose: None (fp32, or the file's own
    # precision on onnxruntime), "bf16" or "int8" (openvino only).
    precision: str | None = None


def cache_root(cache_dir: Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("P2P_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "p2p"


def physical_cores() -> int:
    """Physical cores this process may run on: SMT siblings share one core's FP units, and
    onnxruntime's convolution threads run slower, not faster, when two share a core."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        cpus = set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(),
                       (topo / "core_id").read_text().strip()))
        except OSError:
            return max(1, len(cpus))  # no topology (containers, macOS): count logical CPUs
    return max(1, len(cores))


_HASHES: dict[tuple, str] = {}
_HASH_LOCK = threading.Lock()


def file_sha256(path: Path) -> str:
    """Content hash for cache keys, remembered per (path, size, mtime) within the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        if key in _HASHES:
            return _HASHES[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    with _HASH_LOCK:
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def cpu_identity() -> str:
    """Model name + ISA flags: onnxruntime's optimised CPU graph is specific to them."""
    text = ""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        pass
    fields = dict(line.split(":", 1) for line in text.splitlines()[:40] if ":" in line)
    ident = "|".join(fields.get(k, "").strip() for k in ("model name", "flags"))
    return ident or f"{platform.machine()}|{platform.processor()}"


# --- reading metadata without onnxruntime or onnx -------------------------------------------
# The metadata decides how to build the session (input shape for TensorRT profiles, dtype),
# so it is read before any backend exists, straight from the protobuf wire format: a
# ModelProto's field 14 is ``repeated StringStringEntryProto metadata_props`` (key=1, value=2).
# The same pass walks the graph's messages for tensors stored as external data: a model from a
# stranger whose ``location`` is "../../.ssh/id_rsa" or "/etc/shadow" would otherwise have a
# backend read that file into a tensor (older onnxruntime does; OpenVINO may). Weights and
# other large byte fields are skipped with a seek, so this costs well under a millisecond.

# Message-typed fields on the way from a ModelProto to a TensorProto's external_data
# (onnx.proto3 field numbers; tests/test_untrusted.py checks them against onnx's descriptors).
_TENSOR_PATHS = {
    "model": {7: "graph", 20: "training", 25: "function"},  # .graph, .training_info, .functions
    "training": {1: "graph", 2: "graph"},  # TrainingInfoProto.initialization, .algorithm
    "graph": {1: "node", 5: "tensor", 15: "sparse"},  # .node, .initializer, .sparse_initializer
    "function": {7: "node", 11: "attribute"},  # FunctionProto.node, .attribute_proto
    "node": {5: "attribute"},  # NodeProto.attribute
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph",  # t, g, tensors, graphs,
                  22: "sparse", 23: "sparse"},  # sparse_tensor, sparse_tensors
    "sparse": {1: "tensor", 2: "tensor"},  # SparseTensorProto.values, .indices
    "tensor": {13: "entry"},  # TensorProto.external_data (StringStringEntryProto)
}
_MAX_NESTING = 64  # subgraphs inside attributes inside subgraphs...: a bound, not a stack overflow

def _varint(f) -> int:
    shift = result = 0
    while True:
        b = f.read(1)
        if not b:
            raise EOFError
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def read_metadata_props(path: Path) -> dict[str, str]:
    """The model's metadata_props, after checking that any external data stays in its folder."""
    props: dict[str, str] = {}
    locations: list[str] = []
    saw_graph = False
    with open(path, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        try:
            for field, start, n in _length_delimited(f, end):
                if field == 14:
                    props.update([_entry(f.read(n))])
                elif field in _TENSOR_PATHS["model"]:
                    saw_graph |= field == 7
                    _walk(f, start + n, _TENSOR_PATHS["model"][field], locations, 1)
        except (EOFError, ValueError, UnicodeDecodeError):
            raise ModelError(f"{path}: not an ONNX model (unreadable or truncated protobuf)") from None
    if not saw_graph:
        raise ModelError(f"{path}: not an ONNX model (no graph)")
    check_external_data(Path(path), locations)
    return props


def _walk(f, end: int, kind: str, locations: list[str], depth: int) -> None:
    """Collect the external-data locations of every tensor inside one ``kind`` message."""
    if depth > _MAX_NESTING:
        raise ValueError("messages nested too deep")
    children = _TENSOR_PATHS[kind]
    for field, start, n in _length_delimited(f, end):
        child = children.get(field)
        if child == "entry":
            k, v = _entry(f.read(n))
            if k == "location":
                locations.append(v)
        elif child is not None:
            _walk(f, start + n, child, locations, depth + 1)


def _length_delimited(f, end: int):
    """Yield (field, start, length) for each length-delimited field of the message that ends
    at ``end``, skipping scalars; the reader is put past each field after the caller's turn."""
    while f.tell() < end:
        key = _varint(f)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _varint(f)
        elif wire in (1, 5):
            f.seek(8 if wire == 1 else 4, 1)
        elif wire == 2:
            n = _varint(f)
            start = f.tell()
            if start + n > end:
                raise EOFError
            yield field, start, n
            f.seek(start + n)
        else:
            raise ValueError(f"wire type {wire}")
    if f.tell() != end:  # a field ran past its message
        raise EOFError


def check_external_data(path: Path, locations: list[str]) -> None:
    """Refuse a model whose external data lies outside its own folder: absolute locations,
    ".." that climbs out, or links inside the folder that point out of it."""
    folder = Path(os.path.abspath(path)).parent
    try:
        root = folder.resolve()
    except (OSError, RuntimeError):
        root = folder
    for loc in locations:
        try:
            inside = (not os.path.isabs(loc) and not loc.startswith("\\")
                      and (folder / loc).resolve().is_relative_to(root))
        except (OSError, RuntimeError, ValueError):  # link loops, NUL bytes
            inside = False
        if not inside:
            raise ModelError(f"{path}: refused: its external data {loc!r} lies outside the "
                             f"model's folder {folder} (a model may only read files beside it)")


def _entry(data: bytes) -> tuple[str, str]:
    f, key, value = io.BytesIO(data), "", ""
    while f.tell() < len(data):
        tag = _varint(f)
        if tag & 7 != 2:
            raise ValueError("metadata entry")
        s = f.read(_varint(f)).decode()
        key, value = (s, value) if tag >> 3 == 1 else (key, s)
    return key, value


def read_metadata(path) -> ModelMetadata:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    return ModelMetadata.from_props(read_metadata_props(path), where=str(path))


# --- the engine -------------------------------------------------------------------------------

class Engine:
    def __init__(self, model, provider: str = "auto", batch_size: int = 8,
                 threads: int | None = None, *, cache_dir: Path | None = None,
                 fp16: bool | None = None, device_id: int = 0, cuda_graphs: bool = False,
                 optimized_cache: bool = True, precision: str | None = "auto"):
        if provider not in PROVIDERS:
            raise ProviderError(f"unknown provider {provider!r}; allowed: {choices(PROVIDERS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.path = Path(model)
        self.metadata = read_metadata(self.path)
        self.options = EngineOptions(batch_size, threads, cache_dir, fp16, device_id,
                                     cuda_graphs, optimized_cache)
        # auto: what was tried before the provider that runs, and why it was passed over.
        self.passed_over: list[tuple[str, str]] = []
        from . import backends  # imported here: backends import this module's helpers
        from .precision import open_backend  # the precision rule lives there

        if provider == "auto":
            self._backend = None
            for candidate in backends.auto_order():
                try:
                    self._backend, self.choice = open_backend(self, candidate, precision)
                    break
                except ProviderError as e:
                    self.passed_over.append((candidate, str(e)))
            if self._backend is None:  # cpu is always last, so this is cpu's own error
                raise ProviderError(self.passed_over[-1][1])
        else:
            self._backend, self.choice = open_backend(self, provider, precision)
        self.precision = self.choice.precision  # what runs: fp32 | bf16 | int8 | fp16
        self.provider = self._backend.provider
        # A model exported with a fixed batch dimension runs in chunks of that size.
        fixed = self._backend.fixed_batch
        self.batch_size = fixed if fixed else batch_size
        self._dtype = np.float16 if self.metadata.input_dtype == "float16" else np.float32

    def describe(self) -> str:
        return f"{self._backend.describe()}, batch {self.batch_size}, precision {self.precision}"

    def check_shape(self, shape) -> None:
        """Raise ValueError unless an NCHW batch of this shape can run on this model."""
        m = self.metadata
        if len(shape) != 4 or shape[1] != m.in_channels:
            raise ValueError(f"expected NCHW with {m.in_channels} channels, got shape {tuple(shape)}")
        h, w = shape[2], shape[3]
        if not m.dynamic_size and (h, w) != (m.image_size, m.image_size):
            raise ValueError(f"model takes {m.image_size}x{m.image_size} images, got {h}x{w}")
        if m.dynamic_size and (h % m.size_multiple or w % m.size_multiple or not h or not w):
            raise ValueError(f"model takes H and W multiples of {m.size_multiple}, got {h}x{w}")
        self._backend.check_size(h, w)

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        self.check_shape(x.shape)
        n, _, h, w = x.shape
        if n == 0:
            return np.zeros((0, self.metadata.out_channels, h, w), np.float32)
        outs = []
        for i in range(0, n, self.batch_size):
            chunk = np.ascontiguousarray(x[i:i + self.batch_size], dtype=self._dtype)
            outs.append(np.asarray(self._backend.run(chunk), dtype=np.float32))
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
