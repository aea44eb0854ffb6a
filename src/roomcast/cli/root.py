"""The root of the ``roomcast`` command: the Typer app, its console, and what the commands
that talk to a running server share (their options, how they report failures)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Annotated, Any, Optional

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


DEFAULT_SERVER = "http://127.0.0.1:8000"
ServerOption = Annotated[
    str, typer.Option("--server", help="The server: http://host:port or ws://host:port/v1/ws.")
]
ClientIdOption = Annotated[
    Optional[str],  # noqa: UP045 - typer reads it
    typer.Option("--client-id", help="Who you are (anonymous access); the server picks one."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print raw JSON, one per line.")]


def note(text: str) -> None:
    """A status line for people, on stderr, so stdout stays data only."""
    console.print(text, style="dim", markup=False, highlight=False)


def run_client(coro: Coroutine[Any, Any, int], server: str) -> None:
    """Run a client command; print refusals and connection problems plainly."""
    from roomcast.client import AuthError, RoomcastError

    try:
        code = asyncio.run(coro)
    except AuthError as exc:
        console.print(f"refused: {exc.message}", markup=False)
        raise typer.Exit(4) from None
    except RoomcastError as exc:
        console.print(f"error {exc.code}: {exc.message}", markup=False)
        raise typer.Exit(1) from None
    except (OSError, TimeoutError) as exc:
        console.print(f"cannot reach the server at {server}: {exc}", markup=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if code:
        raise typer.Exit(code)
