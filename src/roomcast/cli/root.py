"""The root of the ``roomcast`` command: the Typer app, its console, and what the commands
that talk to a running server share (their options, how they report failures)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console

from roomcast import __version__

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


def fail(text: str, code: int) -> NoReturn:
    """Say what went wrong on one line of stderr (not wrapped) and exit with ``code``."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


DEFAULT_SERVER = "http://127.0.0.1:8000"


def _check_server(url: str) -> str:
    """``--server`` as given, if it is a server URL; else one line and exit 2, as for a
    server that is not there."""
    from roomcast.client.urls import websocket_url

    try:
        websocket_url(url)
    except ValueError as exc:
        fail(str(exc), 2)
    return url


ServerOption = Annotated[
    str,
    typer.Option(
        "--server",
        help="The server: http://host:port or ws://host:port/v1/ws.",
        callback=_check_server,
    ),
]
ClientIdOption = Annotated[
    Optional[str],  # noqa: UP045 - typer reads it
    typer.Option(
        "--client-id",
        help="Who you are (anonymous access). Default: your own id, made on first use and"
        " kept in the config directory (~/.config/roomcast/client_id on Linux).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print raw JSON, one per line.")]


def note(text: str) -> None:
    """A status line for people, on stderr, so stdout stays data only."""
    console.print(text, style="dim", markup=False, highlight=False)


def resolve_client_id(client_id: str | None) -> str | None:
    """``--client-id`` if given, else the user's remembered one (``cli/client_id.py``); if
    that cannot be kept, a note, and the server picks one."""
    from roomcast.cli.client_id import remembered_client_id

    if client_id:
        return client_id
    try:
        return remembered_client_id()
    except ValueError as exc:
        fail(str(exc), 2)
    except OSError as exc:
        note(f"cannot keep your client_id ({exc}); the server picks one")
        return None


def run_client(coro: Coroutine[Any, Any, int], server: str) -> None:
    """Run a client command; print refusals and connection problems plainly, on one line."""
    from roomcast.client import AuthError, RoomcastError

    try:
        code = asyncio.run(coro)
    except AuthError as exc:
        fail(f"refused: {exc.message}", 4)
    except RoomcastError as exc:
        fail(f"error {exc.code}: {exc.message}", 1)
    except (OSError, TimeoutError) as exc:
        fail(f"cannot reach the server at {server}: {exc}", 2)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if code:
        raise typer.Exit(code)
