"""The one reader of an exported ONNX model file, run before any backend exists.

    model = read_model_file(path)      # ModelFile; raises ModelError naming the file
    model.metadata                     # ModelMetadata (runtime/metadata.py)
    model.external_data                # the files beside it that its tensors read
    model.content_sha256()             # hash of the .onnx AND its external data (cache keys)

Every check that holds for every backend lives here, so ``Engine`` runs it once whether
onnxruntime or OpenVINO then loads the file: the external data stays inside the model's
folder, the metadata parses, the graph's input and output carry the names the metadata gives,
and a fixed-size graph's input is the metadata's ``image_size`` (images are resized to that
size before the graph sees them: a file claiming 65536 must not make each image 50 GB).

The file is read straight from the protobuf wire format, neither onnx nor onnxruntime needed:
a ModelProto's field 14 is ``repeated StringStringEntryProto metadata_props`` (key=1,
value=2); the same pass walks the graph's messages for tensors stored as external data (a
model from a stranger whose ``location`` is "../../.ssh/id_rsa" or "/etc/shadow" would
otherwise have a backend read that file into a tensor: older onnxruntime does; OpenVINO may)
and reads the main graph's inputs and outputs. Weights and other large byte fields are
skipped with a seek, so this costs well under a millisecond.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelError
from .host import file_sha256
from .metadata import ModelMetadata

# Message-typed fields on the way from a ModelProto to a TensorProto's external_data
# (onnx.proto3 field numbers; tests/test_untrusted.py checks them against onnx's descriptors).
# The float export's name that p2p-export gives by default (RUN/export/generator.onnx) and
# p2p-pretrained keeps; the FP16/INT8 files are named from it (generator.int8.onnx).
EXPORT_NAME = "generator.onnx"

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
_GRAPH_INPUT, _GRAPH_OUTPUT = 11, 12  # GraphProto.input, .output (ValueInfoProto)
_MAX_NESTING = 64  # subgraphs inside attributes inside subgraphs...: a bound, not a stack overflow

Dims = tuple  # one entry per axis: an int (dim_value), a str (dim_param) or None (unknown)


@dataclass
class _Scan:
    props: dict[str, str] = field(default_factory=dict)
    locations: list[str] = field(default_factory=list)
    inputs: dict[str, Dims] = field(default_factory=dict)  # main graph only
    outputs: dict[str, Dims] = field(default_factory=dict)
    saw_graph: bool = False


@dataclass(frozen=True)
class ModelFile:
    """An ONNX model file that passed every backend-independent check."""

    path: Path
    metadata: ModelMetadata
    external_data: tuple[Path, ...]  # existing files inside path's folder, in graph order
    input_dims: Dims  # the metadata's input as the graph declares it, e.g. (None, 3, 256, 256)

    def content_sha256(self) -> str:
        """Hex SHA-256 over the .onnx bytes and every external-data file's bytes: a cache key
        derived from it changes when only the weights beside the graph change."""
        h = hashlib.sha256(file_sha256(self.path).encode())
        for p in self.external_data:
            h.update(f"|{p.name}:{file_sha256(p)}".encode())
        return h.hexdigest()


def read_model_file(path) -> ModelFile:
    """Read and check ``path``; ``ModelError`` (one line naming the file) when it is missing,
    not ONNX, reads outside its folder, lacks p2p metadata or contradicts it."""
    path = Path(path)
    if not path.is_file():
        if path.exists() and not path.is_dir():  # (a folder is the caller's to resolve)
            raise ModelError(f"{path}: not a regular file (an ONNX model is one)")
        raise ModelError(f"{path}: no such model file")
    scan = _scan(path)
    meta = ModelMetadata.from_props(scan.props, where=str(path))
    names = (list(scan.inputs), list(scan.outputs))
    if meta.input_name not in scan.inputs or meta.output_name not in scan.outputs:
        raise ModelError(f"{path}: graph inputs/outputs are {names[0]}/{names[1]} but its "
                         f"metadata says {meta.input_name!r}/{meta.output_name!r}")
    dims = scan.inputs[meta.input_name]
    hw, s = list(dims[2:]), meta.image_size
    if not meta.dynamic_size and len(hw) == 2 and all(isinstance(d, int) for d in hw) \
            and hw != [s, s]:
        raise ModelError(f"{path}: graph input is {hw[0]}x{hw[1]} but its metadata says "
                         f"image_size {s}")
    if meta.dynamic_size and len(hw) == 2 and all(isinstance(d, int) for d in hw):
        raise ModelError(f"{path}: graph input is a fixed {hw[0]}x{hw[1]} but its metadata "
                         "says dynamic_size")
    for side, name, want in (("input", meta.input_name, meta.in_channels),
                             ("output", meta.output_name, meta.out_channels)):
        d = (scan.inputs if side == "input" else scan.outputs)[name]
        if len(d) == 4 and isinstance(d[1], int) and d[1] != want:
            raise ModelError(f"{path}: graph {side} has {d[1]} channels but its metadata "
                             f"says {'in' if side == 'input' else 'out'}_channels {want}")
    folder = path.parent
    external = tuple(dict.fromkeys(folder / loc for loc in scan.locations
                                   if (folder / loc).is_file()))
    return ModelFile(path, meta, external, dims)


def read_metadata(path) -> ModelMetadata:
    """The p2p metadata of an exported model (after every check of ``read_model_file``)."""
    return read_model_file(path).metadata


def read_exports(folder: Path) -> dict[Path, ModelMetadata]:
    """The p2p models in ``folder`` (``*.onnx``, sorted) with their metadata: files without
    p2p metadata, or that fail its checks, are not models of ours and are left out, and
    dot-files are an export's temps (``files.stage``)."""
    found = {}
    for path in sorted(Path(folder).glob("*.onnx")):
        if path.name.startswith("."):
            continue
        try:
            found[path] = read_metadata(path)
        except ModelError:
            continue
    return found


def read_metadata_props(path: Path) -> dict[str, str]:
    """The model's metadata_props, after checking that any external data stays in its folder."""
    return _scan(Path(path)).props


def _scan(path: Path) -> _Scan:
    scan = _Scan()
    with open(path, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        try:
            for fld, start, n in _length_delimited(f, end):
                if fld == 14:
                    k, v = _entry(f.read(n))
                    scan.props[k] = v
                elif fld in _TENSOR_PATHS["model"]:
                    scan.saw_graph |= fld == 7
                    _walk(f, start + n, _TENSOR_PATHS["model"][fld], scan, 1)
        except (EOFError, ValueError, UnicodeDecodeError):
            raise ModelError(f"{path}: not an ONNX model (unreadable or truncated protobuf)") from None
    if not scan.saw_graph:
        raise ModelError(f"{path}: not an ONNX model (no graph)")
    check_external_data(path, scan.locations)
    return scan


def _walk(f, end: int, kind: str, scan: _Scan, depth: int) -> None:
    """Collect the external-data locations of every tensor inside one ``kind`` message (and,
    in the main graph, its inputs and outputs)."""
    if depth > _MAX_NESTING:
        raise ValueError("messages nested too deep")
    children = _TENSOR_PATHS[kind]
    main_graph = kind == "graph" and depth == 1  # ModelProto.graph; others sit deeper
    for fld, start, n in _length_delimited(f, end):
        child = children.get(fld)
        if child == "entry":
            k, v = _entry(f.read(n))
            if k == "location":
                scan.locations.append(v)
        elif child is not None:
            _walk(f, start + n, child, scan, depth + 1)
        elif main_graph and fld in (_GRAPH_INPUT, _GRAPH_OUTPUT):
            name, dims = _value_info(f.read(n))
            (scan.inputs if fld == _GRAPH_INPUT else scan.outputs)[name] = dims


def _value_info(data: bytes) -> tuple[str, Dims]:
    """ValueInfoProto (name=1, type=2) -> (name, dims); TypeProto.tensor_type=1,
    TypeProto.Tensor.shape=2, TensorShapeProto.dim=1, Dimension.dim_value=1 / dim_param=2."""
    name, dims = "", ()
    for fld, value in _fields(data):
        if fld == 1 and isinstance(value, bytes):
            name = value.decode()
        elif fld == 2 and isinstance(value, bytes):
            for tf, tensor in _fields(value):
                if tf != 1 or not isinstance(tensor, bytes):
                    continue
                for sf, shape in _fields(tensor):
                    if sf == 2 and isinstance(shape, bytes):
                        dims = tuple(_dim(d) for df, d in _fields(shape)
                                     if df == 1 and isinstance(d, bytes))
    return name, dims


def _dim(data: bytes):
    for fld, value in _fields(data):
        if fld == 1 and isinstance(value, int):
            return value
        if fld == 2 and isinstance(value, bytes):
            return value.decode()
    return None


def _fields(data: bytes):
    """(field, int | bytes) for each field of a small message held in memory."""
    f = io.BytesIO(data)
    while f.tell() < len(data):
        key = _varint(f)
        fld, wire = key >> 3, key & 7
        if wire == 0:
            yield fld, _varint(f)
        elif wire in (1, 5):
            f.seek(8 if wire == 1 else 4, 1)
        elif wire == 2:
            n = _varint(f)
            value = f.read(n)
            if len(value) != n:
                raise EOFError
            yield fld, value
        else:
            raise ValueError(f"wire type {wire}")


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


def _length_delimited(f, end: int):
    """Yield (field, start, length) for each length-delimited field of the message that ends
    at ``end``, skipping scalars; the reader is put past each field after the caller's turn."""
    while f.tell() < end:
        key = _varint(f)
        fld, wire = key >> 3, key & 7
        if wire == 0:
            _varint(f)
        elif wire in (1, 5):
            f.seek(8 if wire == 1 else 4, 1)
        elif wire == 2:
            n = _varint(f)
            start = f.tell()
            if start + n > end:
                raise EOFError
            yield fld, start, n
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
    key, value = "", ""
    for fld, s in _fields(data):
        if not isinstance(s, bytes):
            raise ValueError("metadata entry")
        key, value = (s.decode(), value) if fld == 1 else (key, s.decode())
    return key, value
