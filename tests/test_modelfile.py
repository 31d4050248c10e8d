"""The model-file reader (runtime/modelfile.py) and the shape of runtime/: no import circles,
and every module imports where torch and onnxruntime cannot."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_models import conv_model
from p2p.runtime.engine import Engine
from p2p.runtime.errors import ModelError
from p2p.runtime.modelfile import read_model_file

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"
MODULES = sorted(
    "p2p.runtime." + ".".join(p.relative_to(RUNTIME).with_suffix("").parts).removesuffix(
        ".__init__") if p.name != "__init__.py" or p.parent != RUNTIME else "p2p.runtime"
    for p in RUNTIME.rglob("*.py"))
# A meta-path finder that refuses these names: a module that needs them fails to import.
BLOCKER = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "onnxruntime"}:
                raise ImportError(f"blocked: {name}")
    sys.meta_path.insert(0, Block())
""")


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", MODULES)
def test_each_runtime_module_imports_alone_without_torch_or_onnxruntime(module):
    """A fresh interpreter per module: an import circle shows up as a partly initialised
    module, a hidden dependency as the blocker's ImportError."""
    if module.endswith("server") or module.endswith("metrics"):
        pytest.importorskip("starlette", reason="p2p[serve] not installed")
        pytest.importorskip("prometheus_client", reason="p2p[serve] not installed")
    r = run_blocked(f"import {module}; assert 'torch' not in sys.modules "
                    "and 'onnxruntime' not in sys.modules")
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_blocker_blocks():
    r = run_blocked("import onnxruntime")
    assert r.returncode == 1 and "blocked: onnxruntime" in r.stderr


def _module_imports(path: Path, name: str) -> set[str]:
    """p2p.runtime modules imported at module level (lazy imports inside functions break
    no circle at import time, so they do not count)."""
    tree, out = ast.parse(path.read_text()), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            target = f"{base}.{node.module}" if node.module else base
            out |= {f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target
                    for a in node.names}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            out |= {n for n in names if n and n.startswith("p2p.runtime")}
    return out & set(MODULES)


def test_runtime_has_no_import_circles():
    graph = {}
    for p in RUNTIME.rglob("*.py"):
        rel = p.relative_to(RUNTIME).with_suffix("").parts
        name = ".".join(("p2p", "runtime") + (rel[:-1] if rel[-1] == "__init__" else rel))
        graph[name] = _module_imports(p, name) - {name}
    assert graph["p2p.runtime.backends.ort"] >= {"p2p.runtime.modelfile", "p2p.runtime.host"}
    done: set[str] = set()

    def visit(node, stack):
        assert node not in stack, " -> ".join(stack + [node])
        if node in done:
            return
        for nxt in graph.get(node, ()):
            visit(nxt, stack + [node])
        done.add(node)

    for node in graph:
        visit(node, [])


def test_metadata_reader_needs_no_onnxruntime(tmp_path):
    model = conv_model(tmp_path / "m.onnx")
    r = run_blocked(f"""
        from p2p.runtime.modelfile import read_model_file
        m = read_model_file({str(model)!r})
        print(m.metadata.direction, m.metadata.image_size, m.input_dims)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split(maxsplit=2) == ["AtoB", "32", "('N', 3, 32, 32)\n"]


@pytest.fixture
def external(tmp_path):
    """A conv model whose weights live in m.data beside it."""
    src = conv_model(tmp_path / "src.onnx")
    folder = tmp_path / "model"
    folder.mkdir()
    model = onnx.load(str(src))
    onnx.save_model(model, str(folder / "m.onnx"), save_as_external_data=True,
                    location="m.data", size_threshold=0)
    return folder / "m.onnx"


def test_cache_key_covers_external_data(external, tmp_path, monkeypatch):
    """Fault 10 of issue 14: new weights in m.data, same m.onnx -> a new optimised-graph
    cache entry (and TensorRT cache folder), not the old weights' graph."""
    monkeypatch.setenv("P2P_CACHE", str(tmp_path / "cache"))
    before = read_model_file(external)
    assert [p.name for p in before.external_data] == ["m.data"]
    key_before = before.content_sha256()
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    with Engine(external, "cpu") as e:
        graph_before, y_before = e._backend.cached_graph, e.run(x)
    onnx_bytes = external.read_bytes()
    data = np.fromfile(external.with_name("m.data"), np.float32)
    (data * 0.5).tofile(external.with_name("m.data"))
    os.utime(external.with_name("m.data"), ns=(1, 1))  # a new mtime is not what makes it differ
    after = read_model_file(external)
    assert external.read_bytes() == onnx_bytes
    assert after.content_sha256() != key_before
    with Engine(external, "cpu") as e:
        graph_after, y_after = e._backend.cached_graph, e.run(x)
    assert graph_before is not None and graph_after is not None and graph_after != graph_before
    assert np.abs(y_after - y_before).max() > 1e-3  # the new weights ran


def test_missing_graph_input_name_is_refused_before_any_backend(tmp_path):
    model = onnx.load(str(conv_model(tmp_path / "c.onnx")))
    model.graph.input[0].name = "image"
    model.graph.node[0].input[0] = "image"
    onnx.save(model, str(tmp_path / "renamed.onnx"))
    with pytest.raises(ModelError, match=r"renamed\.onnx: graph inputs/outputs are \['image'\]/"
                                        r"\['output'\] but its metadata says 'input'/'output'"):
        read_model_file(tmp_path / "renamed.onnx")


@pytest.mark.parametrize("key, value, says", [
    ("schema_version", '"1"', 'p2p.schema_version="1" is not an integer'),
    ("checkpoint_sha256", "123", "p2p.checkpoint_sha256=123 is not a string"),
    ("in_channels", '"3"', 'p2p.in_channels="3" is not an integer'),
    ("image_size", "32.0", "p2p.image_size=32.0 is not an integer"),
    ("verified", "1", "p2p.verified=1 is not true or false"),
    ("out_channels", "0", "out_channels=0 is not a positive integer"),
    ("input_range", "[false, true]", "input_range=[False, True] is not a finite"),
    ("dynamic_size", "true", "graph input is a fixed 32x32 but its metadata says dynamic_size"),
    ("out_channels", "1", "graph output has 3 channels but its metadata says out_channels 1"),
])
def test_metadata_of_the_wrong_type_is_one_line_at_load(tmp_path, key, value, says):
    """Hand-edited or foreign metadata: a traceback (a string schema version, a numeric
    hash), a contradiction per image ('3 bands, the model takes 3'), or a wrong result with
    exit 0 (booleans read as a range, out_channels 0 writing TIFFs) before this check."""
    import onnx

    from onnx_models import identity_model
    from p2p.runtime.modelfile import read_model_file

    path = identity_model(tmp_path / "m.onnx", image_size=32)
    m = onnx.load(path)
    for prop in m.metadata_props:
        if prop.key == "p2p." + key:
            prop.value = value
    onnx.save(m, path)
    with pytest.raises(ModelError, match=re.escape(says)):
        read_model_file(path)


def test_a_fifo_as_the_model_is_not_called_missing(tmp_path):
    from p2p.runtime.modelfile import read_model_file

    os.mkfifo(tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="m.onnx: not a regular file"):
        read_model_file(tmp_path / "m.onnx")
