"""The never-arrows of docs/architecture.md, kept true by reading every module's imports.

Static (``ast``), so it sees imports inside functions too and needs none of the optional
packages installed: an edge device that installs only the runtime must never meet torch,
whatever code path a request takes. Lazy imports are allowed only where the rules say so
(a GPU backend's ``tensorrt`` inside the function that needs it).
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The folders that import as edgemp.* (pyproject's package-dir).
PACKAGE_DIRS = {"edgemp": REPO / "edgemp", "edgemp.export": REPO / "export", "edgemp.runtime": REPO / "runtime"}
CORE_MODULES = {"edgemp", "edgemp.errors", "edgemp.graph", "edgemp.graphio", "edgemp.jsonio", "edgemp.metrics",
                "edgemp.spec", "edgemp.text_spec", "edgemp.triton_server"}
# What the serving runtime may never import, not even lazily: the edge device lacks them.
RUNTIME_NEVER = ("torch", "torchvision", "onnx", "onnxscript", "optimum", "transformers", "torch_geometric",
                 "chemprop", "edgemp.models", "edgemp.train", "edgemp.export", "edgemp.bench", "edgemp.cli")
RUNTIME_LAZY_ONLY = ("tensorrt",)  # a GPU backend: imported inside the function that needs it


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (``from a.b import c`` -> ``a.b``)
    line: int
    lazy: bool  # inside a function (runs only when it is called) or under ``if TYPE_CHECKING:``

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}{' (in a function)' if self.lazy else ''}"


def _module_files() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:``: imports for annotations only, never run."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) or _type_checking(child)
            if isinstance(child, ast.Import):
                found.extend(Import(module, a.name, child.lineno, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[: len(package) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                found.append(Import(module, target, child.lineno, lazy))
            visit(child, inner)

    visit(tree, False)
    return found


MODULES = _module_files()
IMPORTS = [imp for name, path in MODULES.items() for imp in _imports(name, path)]


def _is(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def _in(module: str, package: str) -> bool:
    return _is(module, package)


def test_scan_sees_every_part():
    # A scan that found nothing would pass every rule below: make sure it reads the house.
    for part in ("edgemp.graph", "edgemp.runtime.model", "edgemp.runtime.server.app", "edgemp.export.verify",
                 "edgemp.models.net", "edgemp.train.loop", "edgemp.cli.main", "edgemp.bench.backends"):
        assert part in MODULES, part
    assert any(_is(i.target, "torch") for i in IMPORTS)
    assert any(_in(i.source, "edgemp.runtime") and _is(i.target, "onnxruntime") for i in IMPORTS)


def test_runtime_never_imports_torch_models_or_export():
    bad = [i for i in IMPORTS if _in(i.source, "edgemp.runtime")
           and (any(_is(i.target, never) for never in RUNTIME_NEVER)
                or (not i.lazy and any(_is(i.target, lazy) for lazy in RUNTIME_LAZY_ONLY)))]
    assert not bad, "the runtime must stay torch-free (docs/architecture.md):\n" + "\n".join(map(str, bad))


def test_core_imports_nothing_heavier_than_numpy():
    allowed_third_party = {"numpy"}
    bad = []
    for i in IMPORTS:
        if i.source not in CORE_MODULES:
            continue
        root = i.target.split(".")[0]
        if root == "edgemp":
            if i.target not in CORE_MODULES:
                bad.append(i)
        elif root not in sys.stdlib_module_names and root not in allowed_third_party and root != "__future__":
            bad.append(i)
    assert not bad, "edgemp/*.py is the numpy core:\n" + "\n".join(map(str, bad))


def test_export_never_imports_the_server():
    bad = [i for i in IMPORTS if _in(i.source, "edgemp.export") and _is(i.target, "edgemp.runtime.server")]
    assert not bad, "export depends on the core and runtime layouts, never on the server:\n" + "\n".join(map(str, bad))


def test_library_never_imports_the_cli():
    bad = [i for i in IMPORTS if not _in(i.source, "edgemp.cli") and _is(i.target, "edgemp.cli")]
    assert not bad, "the CLI sits on top; nothing below imports it:\n" + "\n".join(map(str, bad))


def test_no_module_level_import_cycles():
    """Two modules importing each other at load time break depending on which loads first.

    Package ``__init__`` files are left out: re-exporting a package's own modules from it is
    the public API, not a cycle between two jobs.
    """
    files = {name for name, path in MODULES.items() if path.name != "__init__.py"}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for i in IMPORTS:
        if not i.lazy and i.source in files and i.target in files and i.target != i.source:
            graph[i.source].add(i.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            connect(v)
    assert not cycles, f"modules that import each other at load time: {cycles}"


def _private_uses(module: str, path: Path) -> list[str]:
    """``from edgemp.x import _name`` and ``x._name`` (``x`` an edgemp module) in ``module``, outside ``x`` itself."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    modules: dict[str, str] = {}  # local name -> the edgemp module it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if not _is(target, "edgemp"):
                continue
            for alias in node.names:
                if _private(alias.name) and target != module:
                    found.append(f"{module}:{node.lineno} imports {target}.{alias.name}")
                if f"{target}.{alias.name}" in MODULES:
                    modules[alias.asname or alias.name] = f"{target}.{alias.name}"
        elif isinstance(node, ast.Import):
            modules.update({a.asname: a.name for a in node.names if a.asname and _is(a.name, "edgemp")})
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                and modules.get(node.value.id, module) != module):
            found.append(f"{module}:{node.lineno} uses {modules[node.value.id]}.{node.attr}")
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_module_uses_another_modules_private_names():
    """A ``_name`` is its module's own business; a helper two modules share is public in the module whose job it is.

    Tests may reach into privates to check them; the library and the benchmarks may not.
    """
    scripts = {f"benchmarks.{p.stem}": p for p in sorted((REPO / "benchmarks").glob("*.py"))}
    bad = [use for name, path in {**MODULES, **scripts}.items() for use in _private_uses(name, path)]
    assert not bad, "make the shared helper public where it belongs:\n" + "\n".join(bad)


def test_a_private_cross_import_is_caught(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from edgemp.export.rewrite import _attr\nfrom edgemp.export import lint\n"
                   "from . import _own_helper\nimport edgemp.export.wrappers as w\n\n"
                   "def f(x):\n    return lint._walk(x), w._as_tuple(x), x._private, _attr\n")
    found = _private_uses("edgemp.export.m", src)
    assert found == ["edgemp.export.m:1 imports edgemp.export.rewrite._attr",
                     "edgemp.export.m:3 imports edgemp.export._own_helper",
                     "edgemp.export.m:7 uses edgemp.export.lint._walk",
                     "edgemp.export.m:7 uses edgemp.export.wrappers._as_tuple"], found


@pytest.mark.parametrize("folder", ["benchmarks"])
def test_benchmarks_import_the_library_not_tests(folder):
    helpers = {p.stem for p in (REPO / "tests").rglob("*.py")} | {"tests"}
    bad = []
    for path in sorted((REPO / folder).glob("*.py")):
        for i in _imports(f"{folder}.{path.stem}", path):
            if i.target.split(".")[0] in helpers:
                bad.append(i)
        if '"tests"' in path.read_text():
            bad.append(f"{path.name} names the tests/ folder (sys.path?)")
    assert not bad, "benchmarks use the library, never tests/:\n" + "\n".join(map(str, bad))


def test_a_never_arrow_is_caught(tmp_path):
    # The scanner must see a lazy torch import inside a runtime-like module.
    src = tmp_path / "m.py"
    src.write_text("import numpy\nfrom . import x\n\ndef f():\n    from torch import nn\n    return nn\n")
    found = _imports("edgemp.runtime.m", src)
    assert [(i.target, i.lazy) for i in found] == [("numpy", False), ("edgemp.runtime", False), ("torch", True)]
