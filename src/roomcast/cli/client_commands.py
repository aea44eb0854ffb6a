"""The commands that talk to a running server through the SDK (``roomcast.client``):
``pub``, ``sub``, ``history``, ``objects`` and ``channels``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Annotated, Any, Optional

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from roomcast.cli.output import event_line, expand_object, json_line, message_line
from roomcast.cli.root import (
    DEFAULT_SERVER,
    ClientIdOption,
    JsonOption,
    ServerOption,
    console,
    note,
    run_client,
)


def pub(
    channel: Annotated[str, typer.Argument(help="The channel, e.g. room:lunch.")],
    text: Annotated[
        Optional[str],  # noqa: UP045 - typer reads it
        typer.Argument(help="The message (text, or JSON with --json); not with --stream."),
    ] = None,
    server: ServerOption = DEFAULT_SERVER,
    client_id: ClientIdOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Send TEXT parsed as JSON data.")] = False,
    name: Annotated[
        Optional[str],  # noqa: UP045 - typer reads it
        typer.Option("--name", help="The message name (default: text)."),
    ] = None,
    id: Annotated[
        Optional[str],  # noqa: UP045 - typer reads it
        typer.Option("--id", help="An idempotency key: a repeat is stored once."),
    ] = None,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream",
            help="Stream stdin as one message: each line is an append; it ends complete at EOF.",
        ),
    ] = False,
) -> None:
    """Publish one message and print its serial.

    With --stream, publish a streaming message, print its serial at once, append each line
    of stdin to it as it is read, and end it complete at end of input (exit 1 if someone
    cancelled it)."""
    if stream:
        if text is not None or as_json:
            raise typer.BadParameter("--stream reads stdin: give no TEXT and no --json")
        run_client(_publish_stream(channel, server, client_id, name, id), server)
        return
    if text is None:
        raise typer.BadParameter("missing TEXT (or use --stream to read stdin)")
    data: Any = text
    if as_json:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"not JSON: {exc}", param_hint="TEXT") from None

    async def publish() -> int:
        from roomcast.client import connect

        async with connect(server, client_id=client_id) as client:
            serial = await client.channels.get(channel).publish(data, name=name, id=id)
        print(serial)
        return 0

    run_client(publish(), server)


async def _publish_stream(
    channel: str, server: str, client_id: str | None, name: str | None, id: str | None
) -> int:
    from roomcast.client import connect

    loop = asyncio.get_running_loop()
    async with connect(server, client_id=client_id) as client:
        async with client.channels.get(channel).stream(name=name or "text", id=id) as message:
            print(message.msg_serial, flush=True)
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                await message.append(line)
    if message.status == "cancelled":
        who = f" by {message.cancelled_by}" if message.cancelled_by else ""
        console.print(f"cancelled{who}", markup=False)
        return 1
    return 0


def sub(
    channel: Annotated[str, typer.Argument(help="The channel, e.g. room:lunch.")],
    server: ServerOption = DEFAULT_SERVER,
    client_id: ClientIdOption = None,
    as_json: JsonOption = False,
    rewind: Annotated[
        Optional[int],  # noqa: UP045 - typer reads it
        typer.Option("--rewind", min=1, max=1000, help="Print the last N messages first."),
    ] = None,
    from_serial: Annotated[
        Optional[int],  # noqa: UP045 - typer reads it
        typer.Option("--from-serial", min=0, help="Replay every event after serial N first."),
    ] = None,
) -> None:
    """Print a channel's events as they happen (serial, client_id, data), until Ctrl-C.

    A dropped connection is resumed with nothing lost or repeated."""
    following = _follow(channel, server, client_id, as_json, rewind, from_serial)
    run_client(_until_stopped(following), server)


async def _until_stopped(following: Coroutine[Any, Any, int]) -> int:
    """Run ``following`` until it ends, or until Ctrl-C or SIGTERM (then exit 0)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(following)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if task.done():
        return task.result()  # raises the client's error, if it gave up
    task.cancel()  # closes the client cleanly on its way out
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0


async def _follow(
    name: str,
    server: str,
    client_id: str | None,
    as_json: bool,
    rewind: int | None,
    from_serial: int | None,
) -> int:
    from roomcast.client import Discontinuity, StateChange, connect

    def on_change(change: StateChange) -> None:
        messages = {
            "disconnected": f"connection lost ({change.reason}); reconnecting",
            "resumed": "reconnected: resumed where it left off",
            "connected": "reconnected (a new session)",
        }
        note(messages[change.event])

    async with connect(server, client_id=client_id) as client:
        for event in ("disconnected", "resumed", "connected"):
            client.on(event, on_change)
        channel = client.channels.get(name)
        subscription = channel.subscribe()
        attached = await channel.attach(rewind=rewind, from_serial=from_serial)
        for message in attached.messages or []:
            print(json_line(message) if as_json else message_line(message), flush=True)
        note(f"attached to {name} at serial {attached.serial}; Ctrl-C to stop")
        while True:
            try:
                async for item in subscription:
                    print(json_line(item) if as_json else event_line(item), flush=True)
                return 0
            except Discontinuity as gap:
                note(f"gap in {name}: {gap.reason} (epoch {gap.epoch}); see `roomcast history`")


def history(
    channel: Annotated[str, typer.Argument(help="The channel, e.g. room:lunch.")],
    server: ServerOption = DEFAULT_SERVER,
    client_id: ClientIdOption = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="How many of the latest messages.")
    ] = 100,
    as_json: JsonOption = False,
) -> None:
    """Print a channel's latest messages, oldest first (msg_serial, client_id, data)."""

    async def read() -> int:
        from roomcast.client import Message, connect

        pages: list[list[Message]] = []
        wanted = limit
        async with connect(server, client_id=client_id) as client:
            async for page in client.channels.get(channel).history(limit=min(wanted, 1000)):
                pages.append(page.messages[-wanted:])
                wanted -= len(pages[-1])
                if wanted <= 0:
                    break
        for messages in reversed(pages):
            for message in messages:
                print(json_line(message) if as_json else message_line(message))
        return 0

    run_client(read(), server)


def objects(
    channel: Annotated[str, typer.Argument(help="The channel, e.g. room:lunch.")],
    server: ServerOption = DEFAULT_SERVER,
    client_id: ClientIdOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a channel's live objects: the root map with its references expanded
    (--json: the raw snapshot, {serial, objects})."""

    async def read() -> int:
        from roomcast.client import connect

        async with connect(server, client_id=client_id) as client:
            live_objects = client.channels.get(channel).objects
            await live_objects.sync()
            snapshot = live_objects.snapshot()
        if as_json:
            print(json_line(snapshot))
            return 0
        print(f"{channel} as of serial {snapshot.serial}")
        states = msgspec.to_builtins(snapshot.objects)
        shown: set[str] = set()
        tree = expand_object(states, "root", shown)
        print(json.dumps(tree, indent=2, ensure_ascii=False))
        rest = {oid: expand_object(states, oid, shown) for oid in states if oid not in shown}
        if rest:
            print("not referenced from root:")
            print(json.dumps(rest, indent=2, ensure_ascii=False))
        return 0

    run_client(read(), server)


def channels(
    server: ServerOption = DEFAULT_SERVER,
    prefix: Annotated[str, typer.Option("--prefix", help="Only names starting with it.")] = "",
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
    as_json: JsonOption = False,
) -> None:
    """List the channels that have messages (GET /v1/channels)."""

    async def list_them() -> int:
        import httpx

        from roomcast.client import list_channels

        try:
            items = await list_channels(server, prefix=prefix, limit=limit)
        except httpx.HTTPError as exc:
            raise OSError(str(exc) or type(exc).__name__) from exc
        if as_json:
            for item in items:
                print(json_line(item))
            return 0
        table = Table("channel", "serial", "updated", "occupancy", box=None, pad_edge=False)
        for item in items:
            updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item.updated_at / 1000))
            table.add_row(item.channel, str(item.serial), updated, str(item.occupancy))
        Console(highlight=False).print(table)
        return 0

    run_client(list_them(), server)
