"""The package's import graph: every module imports, no import circles, no private module imports a public one.

The graph is read from the source (``ast``): every ``import`` in a module, at
its top or inside a function, except those under ``if TYPE_CHECKING:`` (which
never run).  A circle between modules is the first thing that makes a package
hard to change: the layers must read in one direction (see ARCHITECTURE.md).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import scoped_clients

ROOT = Path(scoped_clients.__file__).parent
PACKAGE = "scoped_clients"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


MODULES = {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str) -> set[str]:
    """The package's modules that ``module`` imports (anywhere in it but under ``if TYPE_CHECKING:``)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # a submodule, or a name from the module's namespace
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in MODULES else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: _imports(module) for module in MODULES}


def _is_private(module: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in module.split(".")[1:])


def test_there_is_no_import_circle() -> None:
    """Tarjan's strongly connected components: a component of more than one module is a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def connect(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(GRAPH[module]):
            if imported not in index:
                connect(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            connect(module)
    assert circles == []


def test_no_private_module_imports_a_public_one() -> None:
    """The core never depends on a shim or an integration (the package root's ``__version__`` aside)."""
    offenders = {
        module: sorted(m for m in imported if not _is_private(m) and m != PACKAGE)
        for module, imported in GRAPH.items()
        if _is_private(module)
    }
    assert {module: public for module, public in offenders.items() if public} == {}


def test_the_graph_is_read() -> None:
    """The checks above look at real edges (a parser that found nothing would pass them)."""
    assert "scoped_clients._transport._call" in GRAPH["scoped_clients._transport._base"]
    assert "scoped_clients._vendors" in GRAPH["scoped_clients._vendors.openai"]
    assert "scoped_clients._scope" in GRAPH["scoped_clients._transport._call"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as exc:  # an extra this environment lacks (arq: see scripts/compat.py)
        missing = exc.name or getattr(exc.__cause__, "name", None)  # our modules say which extra, from the cause
        if missing is None or missing.split(".")[0] == PACKAGE:
            raise
        pytest.skip(f"{module} needs {missing}, not installed here")
