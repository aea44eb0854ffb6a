"""The layers of docs/architecture.md, checked on the source.

Every import statement counts: at module level, inside functions, and under
``TYPE_CHECKING``. A rule is a function of the import graph, so the last tests feed the
same functions a deliberately wrong graph and check that they object.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import roomcast

PACKAGE = Path(roomcast.__file__).parent
WEB = PACKAGE / "web"

IO_LIBRARIES = ("asyncio", "starlette", "uvicorn", "sqlite3", "redis", "websockets", "httpx")
WEB_AND_DATABASE = ("starlette", "uvicorn", "websockets", "httpx", "sqlite3", "redis", "h11")
# What a server module may use of backends/: the Store contract and its measuring wrapper.
STORE_CONTRACT = ("roomcast.backends.base", "roomcast.backends.measured")
COMPOSITION_ROOT = "roomcast.server.app"  # opens the store its URL names
# A call to the server from the page: a request, a socket, an event stream, or an address
# of the API (comments count too).
SERVER_CALL = re.compile(r"\b(?:fetch|XMLHttpRequest|WebSocket|EventSource|sendBeacon)\b|/v1/")

Graph = Mapping[str, set[str]]


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: Iterable[str], root: Path = PACKAGE) -> set[str]:
    """Every module ``path`` imports, relative imports resolved. ``from x import y`` is an
    import of ``x.y`` when that is one of ``modules``, else of ``x``."""
    modules = set(modules)
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module → the modules of the package (and outside libraries) it imports."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    return {name: imports_of(path, files, root) for name, path in files.items()}


def in_layer(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


def top(module: str) -> str:
    return module.split(".")[0]


def violations(
    graph: Graph, layer: str, forbidden: Iterable[str], allowed: Iterable[str] = ()
) -> list[str]:
    """``module -> import`` for each import of ``layer`` that falls in ``forbidden`` (package
    layers, or top-level library names) and not in ``allowed``."""
    forbidden, allowed = tuple(forbidden), tuple(allowed)
    out = []
    for module, targets in sorted(graph.items()):
        if not in_layer(module, layer):
            continue
        for target in sorted(targets):
            hit = any(in_layer(target, f) or top(target) == f for f in forbidden)
            if hit and not any(in_layer(target, a) for a in allowed):
                out.append(f"{module} -> {target}")
    return out


def cycles(graph: Graph, layer: str) -> list[list[str]]:
    """The import circles among ``layer``'s modules (one path per circle found)."""
    nodes = {m for m in graph if in_layer(m, layer)}
    found: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module] & nodes):
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(nodes):
        if module not in state:
            visit(module, [module])
    return found


def server_calls(web: Path, library: Iterable[Path]) -> list[str]:
    """Lines of web files outside the client library that call the server themselves."""
    allowed = {p.resolve() for p in library}
    out = []
    for path in sorted(p for p in web.rglob("*") if p.suffix in (".js", ".html")):
        if path.resolve() in allowed:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if SERVER_CALL.search(line):
                out.append(f"{path.relative_to(web)}:{number}: {line.strip()}")
    return out


def client_library(web: Path) -> list[Path]:
    """``roomcast.js`` and the modules of ``roomcast/`` that it is made of."""
    return [web / "roomcast.js", *sorted((web / "roomcast").rglob("*.js"))]


GRAPH = import_graph()


# ---------------------------------------------------------------------------- the rules


def test_protocol_imports_no_io() -> None:
    assert (
        violations(GRAPH, "roomcast.protocol", ["roomcast", *IO_LIBRARIES], ["roomcast.protocol"])
        == []
    )


def test_protocol_loads_no_io_library() -> None:
    code = (
        "import sys, pkgutil, importlib, roomcast.protocol as p\n"
        "for m in pkgutil.iter_modules(p.__path__):\n"
        "    importlib.import_module(p.__name__ + '.' + m.name)\n"
        f"print(','.join(m for m in {IO_LIBRARIES!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_core_imports_no_web_framework_or_database_driver() -> None:
    forbidden = [*WEB_AND_DATABASE, "roomcast.server", "roomcast.agents", "roomcast.client"]
    assert violations(GRAPH, "roomcast.core", forbidden) == []
    # Of the backends, core knows the contract only.
    assert (
        violations(GRAPH, "roomcast.core", ["roomcast.backends"], ["roomcast.backends.base"]) == []
    )


def test_backends_import_neither_server_nor_core() -> None:
    forbidden = ["roomcast.server", "roomcast.core", "roomcast.agents", "roomcast.client"]
    assert violations(GRAPH, "roomcast.backends", forbidden) == []


def test_server_adapters_reach_stores_only_through_core_and_the_contract() -> None:
    adapters = {m: t for m, t in GRAPH.items() if m != COMPOSITION_ROOT}
    forbidden = ["roomcast.backends", "roomcast.agents", "roomcast.client", "roomcast.cli"]
    assert violations(adapters, "roomcast.server", forbidden, STORE_CONTRACT) == []
    assert violations(GRAPH, COMPOSITION_ROOT, ["roomcast.agents", "roomcast.client"]) == []


def test_agents_import_only_the_client_and_the_protocol() -> None:
    forbidden = [
        "roomcast.core",
        "roomcast.server",
        "roomcast.backends",
        "roomcast.settings",
        "roomcast.cli",
        "roomcast.testing",
    ]
    assert violations(GRAPH, "roomcast.agents", forbidden) == []


def test_web_calls_the_server_only_through_the_client_library() -> None:
    library = client_library(WEB)
    assert all(p.exists() for p in library)
    assert server_calls(WEB, library) == []
    calls = "".join(p.read_text() for p in library)  # the rule checks something
    for call in ("fetch(", "new WebSocket(", '"/v1/agents"', '"/v1/channels"'):
        assert call in calls, call


def test_settings_sit_on_the_ground_floor() -> None:
    forbidden = ["roomcast.core", "roomcast.server", "roomcast.agents", "roomcast.client"]
    assert violations(GRAPH, "roomcast.settings", forbidden) == []


def test_no_import_circles() -> None:
    for layer in (
        "roomcast.protocol",
        "roomcast.core",
        "roomcast.client",
        "roomcast.backends",
        "roomcast.server",
        "roomcast.agents",
    ):
        assert cycles(GRAPH, layer) == [], layer


def test_the_sdk_parts_reach_their_client_through_a_protocol() -> None:
    # client.py imports the channel and its parts, never the reverse (client/session.py).
    importers = sorted(m for m, targets in GRAPH.items() if "roomcast.client.client" in targets)
    assert importers == ["roomcast.client"]


# ---------------------------------------------------------------------------- the checker


def write(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_the_checker_catches_a_wrong_import_of_any_kind(tmp_path: Path) -> None:
    package = write(
        tmp_path,
        {
            "__init__.py": "",
            "core/__init__.py": "",
            "core/node.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from ..server.app import App\n"
            ),
            "core/fanout.py": "def late():\n    import starlette\n",
            "core/a.py": "import typing\nif typing.TYPE_CHECKING:\n    from . import b\n",
            "core/b.py": "from .a import x\n",
            "server/__init__.py": "",
            "server/app.py": "",
        },
    )
    graph = import_graph(package)
    assert violations(graph, "pkg.core", ["pkg.server"]) == ["pkg.core.node -> pkg.server.app"]
    assert violations(graph, "pkg.core", ["starlette"]) == ["pkg.core.fanout -> starlette"]
    assert cycles(graph, "pkg.core") == [["pkg.core.a", "pkg.core.b", "pkg.core.a"]]


def test_the_checker_catches_a_page_that_calls_the_server(tmp_path: Path) -> None:
    (tmp_path / "roomcast").mkdir()
    (tmp_path / "roomcast.js").write_text("export async function get() { return fetch('/v1/x') }\n")
    (tmp_path / "roomcast" / "link.js").write_text("const ws = new WebSocket(url)\n")
    (tmp_path / "app.js").write_text("const agents = await fetch('/v1/agents')\n")
    (tmp_path / "index.html").write_text("<a href='/v1/channels'>rooms</a>\n")
    assert server_calls(tmp_path, client_library(tmp_path)) == [
        "app.js:1: const agents = await fetch('/v1/agents')",
        "index.html:1: <a href='/v1/channels'>rooms</a>",
    ]
