"""``roomcast serve``: the server with its in-process agents, until Ctrl-C or SIGTERM.

This is where the server is put together: the settings, the app and its node, and the
agents, whose names the node reserves and whose private key joins the key ring.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import gc
import inspect
import logging
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from roomcast import __version__
from roomcast.aio import cancel_and_wait, log_tasks
from roomcast.cli.root import console
from roomcast.settings import (
    PANELS,
    Settings,
    SettingsError,
    Spec,
    is_loopback,
    shown_default,
)

if TYPE_CHECKING:
    from roomcast.agents.hosting import HostedAgents
    from roomcast.core.node import Node
    from roomcast.protocol.http import AgentInfo


_FLAG_TYPES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool | None": bool,  # --allow-anonymous, --no-allow-anonymous; neither: auto
    "tuple[str, ...]": list[str],  # a repeatable --key
}
"""The type of each kind of setting as a flag (the settings' annotations are strings)."""

_NEGATION = "no_"
"""The prefix of the hidden parameter that a yes/no setting's ``--no-<flag>`` fills."""


def _setting_parameters() -> list[inspect.Parameter]:
    """One ``--flag`` per setting, so the CLI can never drift from :class:`Settings`; its
    help, group and default come from the setting's :class:`Spec`.

    Every default is None here, so that only the flags given override the environment. A
    yes/no setting is two flags, ``--x`` and a hidden ``--no-x`` that its help names: as
    one, ``--help`` would give ``--no-x`` a column of its own, which squeezes the help of
    its whole group at 80 columns.
    """
    params = []
    for f in sorted(fields(Settings), key=lambda f: PANELS.index(f.metadata["spec"].panel)):
        spec: Spec = f.metadata["spec"]
        kind = _FLAG_TYPES[str(f.type)]
        flag = "--key" if f.name == "keys" else "--" + f.name.replace("_", "-")
        shown = f"{escape(spec.help)} [dim]\\[default: {escape(shown_default(f.name))}][/dim]"
        params.append(
            _flag_parameter(
                f.name,
                kind,
                typer.Option(
                    flag,
                    help=shown,
                    metavar="" if kind is bool else spec.metavar,
                    rich_help_panel=spec.panel,
                    show_default=False,
                ),
            )
        )
        if kind is bool:
            negated = typer.Option("--no-" + flag[2:], hidden=True)  # one name: no --no-no-x
            params.append(_flag_parameter(_NEGATION + f.name, bool, negated))
    return params


def _flag_parameter(name: str, kind: Any, option: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[Optional[kind], option],  # noqa: UP045 - typer reads it
    )


def _overrides(flags: dict[str, Any]) -> dict[str, Any]:
    """The settings the flags given set: ``--no-x`` sets ``x`` to False."""
    overrides = {name: value for name, value in flags.items() if not name.startswith(_NEGATION)}
    for name, value in flags.items():
        if name.startswith(_NEGATION) and value:
            setting = name.removeprefix(_NEGATION)
            if overrides[setting]:
                flag = setting.replace("_", "-")
                raise typer.BadParameter(f"--{flag} and --no-{flag} say opposite things")
            overrides[setting] = False
    return overrides


def serve_command(**flags: Any) -> None:
    """``roomcast serve``: one ``--flag`` per setting (see :func:`_setting_parameters`)."""
    try:
        settings = Settings.load(**_overrides(flags))
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
            await app.state.mcp.stop()  # MCP's calls in flight end before their connections
            await super().shutdown(sockets)

    return Server(config)


def _print_banner(settings: Settings, agents: list[AgentInfo]) -> None:
    shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host
    console.print(
        f"[bold]roomcast {__version__}[/bold] serving on http://{shown_host}:{settings.port}"
    )
    console.print(f"  WebSocket: ws://{shown_host}:{settings.port}/v1/ws")
    console.print(f"  HTTP API:  http://{shown_host}:{settings.port}/v1/ (see /openapi.json)")
    console.print(f"  store:     {settings.store_shown}")
    console.print(f"  anonymous: {'on' if settings.anonymous_enabled else 'off'}")
    from roomcast.agents.config import agent_label

    shown = ", ".join(f"{a.name} ({agent_label(a.provider, a.model)}, {a.policy})" for a in agents)
    # soft_wrap: a pip command in a note must stay whole when copied from the terminal.
    console.print(f"  agents:    {shown or 'none in this process'}", markup=False, soft_wrap=True)
    for agent in agents:
        if agent.note:
            console.print(f"             {agent.name}: {agent.note}", markup=False, soft_wrap=True)
    table = Table("setting", "value", box=None, show_header=False, pad_edge=False)
    for name, value in settings.describe():
        table.add_row("  " + name, value)
    console.print(table)


def host_agents(
    node: Node, settings: Settings, environ: Mapping[str, str] | None = None
) -> HostedAgents:
    """The server's in-process agents, wired in: the node reserves their names and lists
    them, the key they connect with joins the key ring (it is never printed), and their
    connections reach the node in memory.

    Raises:
        AgentConfigError: The agents file cannot be used.
        ProviderConfigError: An agent's provider cannot be used (e.g. its package is
            missing).
        ToolError: An agent names a tool that cannot be loaded.
    """
    from roomcast.agents.hosting import HostedAgents
    from roomcast.server.in_process import InProcessDialer

    hosted = HostedAgents(settings, environ, InProcessDialer(node))
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


# Young collections every 10,000 allocations, not 700; full ones after 100 middle ones, not 10.
GC_THRESHOLDS = (10_000, 10, 100)


def freeze_startup_objects() -> None:
    """Move what start-up allocated (modules, the app, the settings) out of the garbage
    collector's sight. A full collection then scans only what serving allocated: about 3 ms
    instead of 23 on a fresh server, a pause that would otherwise stall every delivery
    (docs/benchmarks.md).

    Then collect the young generation less often: thousands of pipelined requests in
    flight outlive a young collection every 700 allocations and fill the older generations,
    so collecting was a fifth of a publishing server's CPU (about 1,330 collections in a
    50,000-publish run; 91 with these thresholds, 10-15% less CPU per publish).

    And collect everything less often. Each connection is some 70 objects that live as long
    as it does, so while thousands connect at once (a restart, and every client resuming)
    the heap grows by a quarter again and again, and each time Python scans all of it: a
    full collection every 10 middle ones took 0.7 s of a 19,000-client resume (one of them
    0.5 s, a pause for every connection), and found almost nothing to free. Cyclic garbage
    that outlived two collections waits longer for a full one: ten times as many
    allocations."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _refuse(reason: str) -> None:
    """Why the server does not start: one line (never wrapped, so it greps), no traceback."""
    console.print(" ".join(reason.split()), style="red", markup=False, soft_wrap=True)


class CannotListen(Exception):
    """The server's address cannot be listened on; the message is one line for its user."""


_LISTEN_ERRORS = {
    errno.EADDRINUSE: "port {port} is in use; pass --port",
    errno.EADDRNOTAVAIL: "cannot listen on {host}: it is not an address of this machine; "
    "pass --host",
    errno.EACCES: "cannot listen on port {port}: it needs privileges this user lacks; pass --port",
}


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Sockets listening on ``host``:``port``, made as asyncio's ``create_server`` makes them
    (one per address the host resolves to, reusable while old connections linger, IPv6 ones
    IPv6-only). They are made before the store is opened and the banner printed, so that a
    busy port is one line and touches nothing; uvicorn then serves on them.

    Raises:
        CannotListen: Why not, in one line that names the flag to change.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CannotListen(f"cannot listen on {host}: {exc.strerror}; pass --host") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen()  # two servers may both bind a port (SO_REUSEADDR); one listens
    except OSError as exc:
        for sock in sockets:
            sock.close()
        why = _LISTEN_ERRORS.get(
            exc.errno or 0, "cannot listen on {host} port {port}: {why}; pass --host or --port"
        )
        raise CannotListen(why.format(host=host, port=port, why=exc.strerror)) from None
    return sockets


async def _serve_until_stopped(app: Any, server: Any, settings: Settings) -> int:
    return_large_buffers_to_the_system()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, log_tasks)
    try:
        sockets = listening_sockets(settings.host, settings.port)
    except CannotListen as exc:
        _refuse(str(exc))
        return 1
    try:
        return await _serve_on(sockets, app, server, settings)
    finally:
        for sock in sockets:  # uvicorn closes them once it has served; not if it never did
            sock.close()


async def _serve_on(sockets: list[socket.socket], app: Any, server: Any, settings: Settings) -> int:
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
    _print_banner(settings, agents.infos)
    try:
        async with app.state.mcp.run():  # MCP's session manager, from start to stop
            await _serve_and_start_agents(sockets, app, server, agents)
    finally:
        await agents.aclose(0)
        await node.stop()
    return 0 if server.started else 3


async def _serve_and_start_agents(
    sockets: list[socket.socket], app: Any, server: Any, agents: HostedAgents
) -> None:
    # Not ready (/readyz) until the agents are up, so that nothing is sent to a node whose
    # agents are still connecting (a load balancer, a test).
    app.state.agents_ready = not agents.infos
    serving = asyncio.ensure_future(server.serve(sockets))
    listening = asyncio.ensure_future(server.listening.wait())
    await asyncio.wait({serving, listening}, return_when=asyncio.FIRST_COMPLETED)
    listening.cancel()
    if server.started and not serving.done():
        app.state.agents = agents
        # Beside the serving task: a shutdown that comes while the agents start (their
        # connections closed under them) ends the start instead of waiting for it forever.
        starting = asyncio.ensure_future(agents.start())
        await asyncio.wait({serving, starting}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            with contextlib.suppress(Exception):  # shutting down: how it ended is moot
                await cancel_and_wait(starting)
        elif not starting.cancelled() and starting.exception() is not None:
            logging.getLogger("roomcast.agents").error(
                "the agents could not start", exc_info=starting.exception()
            )
        app.state.agents_ready = True
    freeze_startup_objects()
    await serving


serve_command.__signature__ = inspect.Signature(_setting_parameters())  # type: ignore[attr-defined]
