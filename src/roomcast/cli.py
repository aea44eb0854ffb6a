"""The ``roomcast`` command line: ``roomcast serve`` (more commands arrive with the SDK)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import sys
from dataclasses import fields
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from roomcast import __version__
from roomcast.settings import Settings, SettingsError, is_loopback

app = typer.Typer(
    help="roomcast: realtime group chats for people and AI agents.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """roomcast: realtime group chats for people and AI agents."""


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def _setting_parameters() -> list[inspect.Parameter]:
    """One ``--flag`` per setting, so the CLI can never drift from :class:`Settings`."""
    params = []
    for f in fields(Settings):
        spec = f.metadata["spec"]
        env = "ROOMCAST_" + f.name.upper()
        type_name = str(f.type)
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


def _serve(**overrides: Any) -> None:
    try:
        settings = Settings.load(**overrides)
    except SettingsError as exc:
        raise typer.BadParameter(str(exc)) from None
    if not settings.anonymous_enabled and not is_loopback(settings.host):
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
    from roomcast.server.protocol import RoomcastWebSocketProtocol

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
        ws=RoomcastWebSocketProtocol,
        ws_ping_interval=settings.heartbeat_s,
        ws_ping_timeout=settings.heartbeat_s,
        ws_max_size=2 * settings.max_message_bytes + 64 * 1024,
        ws_per_message_deflate=False,
        log_level=settings.log_level.lower(),
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    # uvicorn re-raises the signal that stopped it once it has shut down; a clean shutdown
    # (connections closed, store flushed) should exit 0, so that re-raise is absorbed here.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        import uvloop

        code = uvloop.run(_serve_until_stopped(app, uvicorn.Server(config), settings))
    except ImportError:
        code = asyncio.run(_serve_until_stopped(app, uvicorn.Server(config), settings))
    if code:
        sys.exit(code)
    console.print("roomcast stopped: store flushed and closed")


def _print_banner(settings: Settings) -> None:
    shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host
    console.print(
        f"[bold]roomcast {__version__}[/bold] serving on http://{shown_host}:{settings.port}"
    )
    console.print(f"  WebSocket: ws://{shown_host}:{settings.port}/v1/ws")
    console.print(f"  store:     {settings.store_url}")
    console.print(f"  anonymous: {'on' if settings.anonymous_enabled else 'off'}")
    table = Table("setting", "value", box=None, show_header=False, pad_edge=False)
    for name, value in settings.describe():
        table.add_row("  " + name, value)
    console.print(table)


async def _serve_until_stopped(app: Any, server: Any, settings: Settings) -> int:
    node = app.state.node
    try:
        await node.start()
    except Exception as exc:
        console.print(f"[red]cannot open the store {settings.store_url}:[/red] {exc}")
        return 3
    _print_banner(settings)
    try:
        await server.serve()
    finally:
        await node.stop()
    return 0 if server.started else 3


_serve.__signature__ = inspect.Signature(_setting_parameters())  # type: ignore[attr-defined]
app.command(
    "serve",
    help="Run the server (WebSocket /v1/ws, /healthz, /readyz) until Ctrl-C or SIGTERM.",
)(_serve)


def main() -> None:
    app(prog_name="roomcast")
