"""agents/ is a client of the server like any other: it imports the SDK (``roomcast.client``)
and the protocol, never the server's core, its adapters or its settings."""

from __future__ import annotations

import ast
from pathlib import Path

import roomcast.agents

AGENTS = Path(roomcast.agents.__file__).parent
SERVER_SIDE = ("roomcast.core", "roomcast.server", "roomcast.settings", "roomcast.backends")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, wherever the import stands (TYPE_CHECKING too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_agents_module_imports_the_server_side() -> None:
    found = {
        f"{path.relative_to(AGENTS)}: {name}"
        for path in AGENTS.rglob("*.py")
        for name in imported_modules(path)
        if name.startswith(SERVER_SIDE)
    }
    assert found == set()
