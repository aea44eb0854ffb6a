"""The SDK's modules import one another one way only: no circle, not even one hidden under
``TYPE_CHECKING`` or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import roomcast.client

PACKAGE = "roomcast.client"
ROOT = Path(roomcast.client.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join((PACKAGE, *parts)).removesuffix(".__init__")


def imported(node: ast.Import | ast.ImportFrom, here: str, is_package: bool) -> list[str]:
    """The names a statement in module ``here`` imports, as absolute module names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = here.split(".")
        if not is_package:
            base.pop()
        base = base[: len(base) - (node.level - 1)]
        origin = ".".join(base + ([node.module] if node.module else []))
    else:
        origin = node.module or ""
    # `from . import channel` imports a module; `from .channel import Channel` a name.
    return [origin] + [f"{origin}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """Module → the modules of the package it imports, wherever the import statement is."""
    paths = {module_name(path): path for path in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(), str(path))
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                targets.update(imported(node, name, path.name == "__init__.py"))
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (its modules, the first repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        path.append(module)
        for target in sorted(graph[module]):
            cycle = visit(target)
            if cycle is not None:
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle is not None:
            return cycle
    return None


def test_the_client_package_has_no_import_circle() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.channel" in graph[f"{PACKAGE}.client"]  # the graph is really read
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_nothing_in_the_package_imports_the_client_module() -> None:
    graph = import_graph()
    importers = sorted(m for m, targets in graph.items() if f"{PACKAGE}.client" in targets)
    assert importers == [PACKAGE]  # only __init__ re-exports it


def test_the_check_finds_a_circle_hidden_under_type_checking() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    tree = ast.parse("if TYPE_CHECKING:\n    from .channel import Channel\n")
    [node] = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    names = imported(node, f"{PACKAGE}.stream", is_package=False)
    assert f"{PACKAGE}.channel" in names
