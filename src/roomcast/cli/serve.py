"""``roomcast serve``: the server with its in-process agents, until Ctrl-C or SIGTERM.

This is where the server is put together: the settings, the app and its node, and the
agents, whose names the node reserves and whose private key joins the key ring.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import inspect
import logging
import signal
import sys
from collections.abc import Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.table import Table

from roomcast import __version__
from roomcast.cli.root import console
from roomcast.settings import Settings, SettingsError, is_loopback

if TYPE_CHECKING:
    from roomcast.agents.hosting import HostedAgents
    from roomcast.core.node import Node


def _setting_parameters() -> list[inspect.Parameter]:
    """One ``--flag`` per setting, so the CLI can never drift from :class:`Settings`."""
    params = []
    for f in fields(Settings):
        spec = f.metadata["spec"]
        env = "ROOMCAST_" + f.name.upper()
        type_name = str(f.type)
        if f.name == "keys":  # the one list: a repeatable --key
            params.append(
                inspect.Parameter(
                    f.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=None,
                    annotation=Annotated[
                        Optional[list[str]],  # noqa: UP045 - typer reads it
                        typer.Option(
                            "--key",
                            help=f"{spec.help} [env: {env}; default: none]",
                            show_default=False,
                        ),
                    ],
                )
            )
            continue
        kind: Any = (
            bool
            if "bool" in type_name
            else int
            if type_name == "int"
            else (float if type_name == "float" else str)
        )
        option = typer.Option(
            help=f"{spec.help} [env: {env}; default: {f.default!s}]",
            show_default=False,
        )
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[Optional[kind], option],  # noqa: UP045 - typer reads it
            )
        )
    return params


def serve_command(**overrides: Any) -> None:
    """``roomcast serve``: one ``--flag`` per setting (see :func:`_setting_parameters`)."""
    try:
        settings = Settings.load(**overrides)
    except SettingsError as exc:
        raise typer.BadParameter(str(exc)) from None
    if not settings.anonymous_enabled and not settings.keys and not is_loopback(settings.host):
        raise typer.BadParameter(
            f"refusing to serve on {settings.host} with no way in: no API keys are configured "
            "and anonymous access is off. Pass --allow-anonymous (or ROOMCAST_ALLOW_ANONYMOUS=1) "
            "to let anyone connect, or bind to 127.0.0.1."
        )
    run_server(settings)


def run_server(settings: Settings) -> None:
    """Print what is being served, then serve until Ctrl-C or SIGTERM."""
    import uvicorn

    from roomcast.backends import BackendURLError
    from roomcast.server import create_app
    from roomcast.server.uvicorn_http import http_protocol
    from roomcast.server.uvicorn_websocket import RoomcastWebSocketProtocol

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    try:
        app = create_app(settings, manage_node=False)
    except BackendURLError as exc:
        raise typer.BadParameter(str(exc), param_hint="--store") from None
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=http_protocol(app.state.overload, settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type] # any float works
        ws=RoomcastWebSocketProtocol,
        ws_ping_interval=settings.heartbeat_s,
        ws_ping_timeout=settings.heartbeat_s,
        ws_max_size=2 * settings.max_message_bytes + 64 * 1024,
        ws_per_message_deflate=False,
        log_level=settings.log_level.lower(),
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    from roomcast.server.auth import RedactCredentials

    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(RedactCredentials())
    # uvicorn re-raises the signal that stopped it once it has shut down; a clean shutdown
    # (connections closed, store flushed) should exit 0, so that re-raise is absorbed here.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        import uvloop

        code = uvloop.run(_serve_until_stopped(app, _uvicorn_server(app, config), settings))
    except ImportError:
        code = asyncio.run(_serve_until_stopped(app, _uvicorn_server(app, config), settings))
    if code:
        sys.exit(code)
    console.print("roomcast stopped: store flushed and closed")


def _uvicorn_server(app: Any, config: Any) -> Any:
    """uvicorn's server; at shutdown it first ends the SSE streams, which never end by
    themselves (clients reconnect elsewhere with ``Last-Event-ID``)."""
    import uvicorn

    class Server(uvicorn.Server):
        listening = asyncio.Event()

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                self.listening.set()

        async def shutdown(self, sockets: Any = None) -> None:
            agents = getattr(app.state, "agents", None)
            if agents is not None:  # running answers finish (5 s) while connections are up
                await agents.aclose()
            app.state.event_streams.close_all()
            await super().shutdown(sockets)

    return Server(config)


def _print_banner(settings: Settings, agents: list[Any]) -> None:
    shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host
    console.print(
        f"[bold]roomcast {__version__}[/bold] serving on http://{shown_host}:{settings.port}"
    )
    console.print(f"  WebSocket: ws://{shown_host}:{settings.port}/v1/ws")
    console.print(f"  HTTP API:  http://{shown_host}:{settings.port}/v1/ (see /openapi.json)")
    console.print(f"  store:     {settings.store_shown}")
    console.print(f"  anonymous: {'on' if settings.anonymous_enabled else 'off'}")
    shown = ", ".join(f"{a.name} ({a.provider} {a.model}, {a.policy})" for a in agents)
    console.print(f"  agents:    {shown or 'none in this process'}", markup=False)
    table = Table("setting", "value", box=None, show_header=False, pad_edge=False)
    for name, value in settings.describe():
        table.add_row("  " + name, value)
    console.print(table)


def host_agents(
    node: Node, settings: Settings, environ: Mapping[str, str] | None = None
) -> HostedAgents:
    """The server's in-process agents, wired in: the node reserves their names and lists
    them, and the key they connect with joins the key ring (it is never printed).

    Raises:
        AgentConfigError: The agents file cannot be used.
        ProviderConfigError: An agent's provider cannot be used (e.g. its package is
            missing).
        ToolError: An agent names a tool that cannot be loaded.
    """
    from roomcast.agents.hosting import HostedAgents

    hosted = HostedAgents(settings, environ)
    node.agent_names = hosted.names
    node.agents = hosted.infos
    if hosted.key is not None:
        settings.key_ring.add(hosted.key)
    return hosted


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def return_large_buffers_to_the_system() -> None:
    """Have glibc map every buffer over 128 KiB on its own, so it goes back to the system
    when freed. By default glibc raises that threshold after the first such buffer is
    freed, and later ones (a reply of a few MB queued for a slow client) stay in its heap
    after the client has gone. Elsewhere than glibc this does nothing."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


def freeze_startup_objects() -> None:
    """Move what start-up allocated (modules, the app, the settings) out of the garbage
    collector's sight. A full collection then scans only what serving allocated: about 3 ms
    instead of 23 on a fresh server, a pause that would otherwise stall every delivery
    (docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()


def _refuse(reason: str) -> None:
    """Why the server does not start: one line (never wrapped, so it greps), no traceback."""
    console.print(" ".join(reason.split()), style="red", markup=False, soft_wrap=True)


async def _serve_until_stopped(app: Any, server: Any, settings: Settings) -> int:
    return_large_buffers_to_the_system()
    node = app.state.node
    try:
        agents = host_agents(node, settings)
    except Exception as exc:  # a bad agents file, a missing provider package
        _refuse(f"cannot start the agents: {exc}")
        return 2
    try:
        await node.start()  # a SQLite file is checked: integrity, then a write probe
    except Exception as exc:  # locked, damaged, takes no writes, unreachable, too new
        _refuse(f"cannot open the store {settings.store_shown}: {exc}")
        return 3
    _print_banner(settings, agents.agents)
    try:
        serving = asyncio.ensure_future(server.serve())
        listening = asyncio.ensure_future(server.listening.wait())
        await asyncio.wait({serving, listening}, return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        if server.started and not serving.done():
            app.state.agents = agents
            try:
                await agents.start()
            except Exception:
                logging.getLogger("roomcast.agents").exception("the agents could not start")
        freeze_startup_objects()
        await serving
    finally:
        await agents.aclose(0)
        await node.stop()
    return 0 if server.started else 3


serve_command.__signature__ = inspect.Signature(_setting_parameters())  # type: ignore[attr-defined]
