"""The import rule, read from the source: ``cli → trainer | export | runtime``,
``export → trainer → runtime``, and ``runtime`` imports no other p2p package and never torch.

Every module's AST is walked, so imports made inside functions (the lazy ones that keep a
command fast to start) count as much as those at the top: a child-interpreter import test
(tests/test_cli.py) only sees the imports that ran.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cli", "export", "trainer", "runtime")
ALLOWED = {"cli": {"cli", "trainer", "export", "runtime"},
           "export": {"export", "trainer", "runtime"},
           "trainer": {"trainer", "runtime"},
           "runtime": {"runtime"}}
NEVER = {"runtime": {"torch", "torchvision"}}  # a deployment installs neither


def modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield package, path


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every Import / ImportFrom in the file, anywhere."""
    here = ["p2p", *path.relative_to(ROOT).parent.parts]  # the module's package
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: up (level - 1) packages from this module's package
                base = here[:len(here) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
                # "from . import x" may name submodules: count each as imported
                out += ([(node.lineno, f"{name}.{a.name}") for a in node.names]
                        if not node.module else [(node.lineno, name)])
            else:
                out.append((node.lineno, node.module))
                # "from p2p.runtime import images" imports the module p2p.runtime.images
                out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                        if node.module.startswith("p2p.") and is_module(f"{node.module}.{a.name}")]
    return out


def is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(["p2p", *(rel.parts[:-1] if rel.name == "__init__" else rel.parts)])


def p2p_package(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] == "p2p" and len(parts) > 1:
        return parts[1]
    return None


def violations() -> list[str]:
    bad = []
    for package, path in modules():
        for line, name in imported(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            target = p2p_package(name)
            if target is not None and target not in ALLOWED[package]:
                bad.append(f"{where}: {package} imports {name}")
            if name.split(".")[0] in NEVER.get(package, ()):
                bad.append(f"{where}: {package} imports {name}")
    return bad


def test_every_import_points_the_allowed_way():
    assert violations() == []


def test_the_walk_sees_imports_inside_functions(tmp_path, monkeypatch):
    """The test itself can fail: a lazy import of torch and of p2p.export in runtime."""
    fake = tmp_path / "runtime"
    fake.mkdir()
    (fake / "m.py").write_text("def f():\n    import torch\n    from ..export import onnx\n"
                               "    from .errors import P2PError\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert sorted(imported(fake / "m.py")) == [(2, "torch"), (3, "p2p.export"),
                                                (4, "p2p.runtime.errors")]
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
    assert violations() == ["runtime/m.py:2: runtime imports torch",
                            "runtime/m.py:3: runtime imports p2p.export"]


def test_no_two_modules_import_each_other():
    """Issue 22: export/int8.py and export/verify.py imported each other (one lazily)."""
    graph = {module_name(path): {n for _, n in imported(path) if is_module(n)}
             for _, path in modules()}
    mutual = sorted(f"{a} <-> {b}" for a, deps in graph.items() for b in deps
                    if a < b and a in graph.get(b, ()))
    assert mutual == []


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_has_modules(package):
    assert any(True for p, _ in modules() if p == package)
