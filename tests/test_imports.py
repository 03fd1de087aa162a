"""No import circles in hwl/: between its packages (hwl.kernel, hwl.ipc, hwl.link, ...)
nor between its modules.

The graph is read from the sources (ast), not from an interpreter: an edge is an
import a module runs when it is loaded (its body, a class body, an ``if`` or
``try`` at that level), not one inside a function (run later, on purpose lazy) nor
under ``if TYPE_CHECKING:`` (never run). Importing ``a.b.c`` also loads ``a`` and
``a.b``; those implicit edges are left out, as import linters do: only what a
module names counts.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import hwl

ROOT = Path(hwl.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _load_time_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports a module body runs as it loads."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _type_checking(node.test):
                yield from _load_time_imports(node.body)
            yield from _load_time_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _load_time_imports(block)
            for handler in node.handlers:
                yield from _load_time_imports(handler.body)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _load_time_imports(node.body)


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The hwl modules ``name`` imports as it loads."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in _load_time_imports(tree.body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import mod`` names module pkg.mod; ``from mod import x``, mod
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        found.update(t for t in targets if t in known and t != name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def package_of(module: str) -> str:
    """hwl.kernel.calls.devio -> hwl.kernel; hwl.procs -> hwl.procs; hwl -> hwl."""
    return ".".join(module.split(".")[:2])


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def package_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Package -> packages its modules import (the root package ``hwl`` left out:
    it re-exports the public API, so it imports many and is imported by none)."""
    packages: dict[str, set[str]] = {}
    for module, targets in edges.items():
        src = package_of(module)
        out = packages.setdefault(src, set())
        out.update(package_of(t) for t in targets if package_of(t) != src)
    return packages


def test_the_graph_sees_known_edges() -> None:
    """The reader finds imports of each form, so an empty cycle list means something."""
    edges = graph()
    assert "hwl.kernel.ipc" in edges["hwl.kernel.kernel"]  # from hwl.kernel.ipc import ...
    assert "hwl.ipc.wire" in edges["hwl.kernel.kernel"]  # from hwl.ipc import wire
    assert "hwl.kernel.errno" in edges["hwl.kernel.ipc"]  # a sibling, by its full name
    assert "hwl.link" in package_graph(edges)["hwl.kernel"]


def test_cycles_finds_a_circle_and_ignores_a_chain() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circle_between_modules() -> None:
    assert cycles(graph()) == []


def test_no_import_circle_between_packages() -> None:
    edges = graph()
    packages = package_graph({m: t for m, t in edges.items() if m != "hwl"})
    found = cycles(packages)
    detail = {
        " <-> ".join(circle): sorted(
            f"{m} -> {t}"
            for m, ts in edges.items()
            if package_of(m) in circle
            for t in ts
            if package_of(t) in circle and package_of(t) != package_of(m)
        )
        for circle in found
    }
    assert found == [], detail
