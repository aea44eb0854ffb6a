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
from typing import TYPE_CHECKING, Annotated, Any, Optional

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from roomcast.cli.feed import make_feed
from roomcast.cli.line_reader import LineReader
from roomcast.cli.output import (
    expand_object,
    json_line,
    message_block,
)
from roomcast.cli.root import (
    DEFAULT_SERVER,
    ClientIdOption,
    JsonOption,
    ServerOption,
    console,
    resolve_client_id,
    run_client,
)

if TYPE_CHECKING:
    from roomcast.client import MessageStream

INTERNAL = "meta:"  # the namespace of the server's own channels (meta:channels)
MAX_LISTED = 1000  # GET /v1/channels answers at most this many


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
            help="Stream stdin as one message: each line is an append; it ends complete at"
            " end of input (Ctrl-D), cancelled on Ctrl-C.",
        ),
    ] = False,
) -> None:
    """Publish one message and print its serial.

    With --stream, publish a streaming message, print its serial at once, append each line
    of stdin to it as it is read, and end it complete at end of input (Ctrl-D); Ctrl-C ends
    it cancelled (exit 130), and a cancel by someone else stops it too (exit 1)."""
    if stream:
        if text is not None or as_json:
            raise typer.BadParameter("--stream reads stdin: give no TEXT and no --json")
        client_id = resolve_client_id(client_id)
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
    client_id = resolve_client_id(client_id)

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

    async with connect(server, client_id=client_id) as client:
        async with client.channels.get(channel).stream(name=name or "text", id=id) as message:
            print(message.msg_serial, flush=True)
            stopped_by = await _append_input(message)
            if stopped_by is not None:
                await message.cancel()
    if stopped_by is not None:
        console.print(("\n" if sys.stdin.isatty() else "") + "cancelled", markup=False)
        return 128 + stopped_by
    if message.status == "cancelled":
        who = f" by {message.cancelled_by}" if message.cancelled_by else ""
        console.print(f"cancelled{who}", markup=False)
        return 1
    return 0


async def _append_input(message: MessageStream) -> int | None:
    """Append each line of stdin to ``message`` until end of input or a cancel by someone
    (then ``None``), or until Ctrl-C or SIGTERM (then the signal's number)."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    stopped: asyncio.Future[int] = loop.create_future()
    for sig in signals:
        loop.add_signal_handler(sig, _settle, stopped, int(sig))
    cancelled = asyncio.ensure_future(message.cancelled.wait())
    try:
        async with LineReader(sys.stdin.fileno(), sys.stdin.encoding or "utf-8") as lines:
            while not (stopped.done() or cancelled.done()):
                line = asyncio.ensure_future(lines.next_line())
                waiting: set[asyncio.Future[Any]] = {line, stopped, cancelled}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if not line.done():
                    line.cancel()
                elif (text := line.result()) is None:
                    return None
                else:
                    await message.append(text)
    finally:
        cancelled.cancel()
        for sig in signals:
            loop.remove_signal_handler(sig)
    return stopped.result() if stopped.done() else None


def _settle(future: asyncio.Future[int], value: int) -> None:
    if not future.done():
        future.set_result(value)


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
    client_id = resolve_client_id(client_id)
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
        feed.note(messages[change.event])

    feed = make_feed(as_json)
    async with connect(server, client_id=client_id) as client:
        for event in ("disconnected", "resumed", "connected"):
            client.on(event, on_change)
        channel = client.channels.get(name)
        subscription = channel.subscribe()
        attached = await channel.attach(rewind=rewind, from_serial=from_serial)
        try:
            for message in attached.messages or []:
                feed.message(message)
            feed.note(f"attached to {name} at serial {attached.serial}; Ctrl-C to stop")
            while True:
                try:
                    async for item in subscription:
                        feed.event(item)
                    return 0
                except Discontinuity as gap:
                    feed.note(
                        f"gap in {name}: {gap.reason} (epoch {gap.epoch}); see `roomcast history`"
                    )
        finally:
            feed.close()


def history(
    channel: Annotated[str, typer.Argument(help="The channel, e.g. room:lunch.")],
    server: ServerOption = DEFAULT_SERVER,
    client_id: ClientIdOption = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="How many of the latest messages.")
    ] = 100,
    as_json: JsonOption = False,
) -> None:
    """Print a channel's latest messages, oldest first (msg_serial, client_id, [status,]
    text; continuation lines indented)."""
    client_id = resolve_client_id(client_id)

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
                print(json_line(message) if as_json else message_block(message))
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
    client_id = resolve_client_id(client_id)

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
    show_all: Annotated[
        bool, typer.Option("--all", help=f"Include the server's own ({INTERNAL}*) channels.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """List the channels that have messages (GET /v1/channels), by name; the server's own
    channels (meta:channels, ...) only with --all or a --prefix that names them."""
    shown = show_all or prefix.startswith(INTERNAL)

    async def list_them() -> int:
        import httpx

        from roomcast.client import list_channels

        asked = limit
        try:
            while True:  # ask for more by as many as were hidden, until `limit` are shown
                items = await list_channels(server, prefix=prefix, limit=asked)
                kept = [i for i in items if shown or not i.channel.startswith(INTERNAL)]
                if len(kept) >= limit or len(items) < asked or asked >= MAX_LISTED:
                    break
                asked = min(MAX_LISTED, asked + len(items) - len(kept))
        except httpx.HTTPError as exc:
            raise OSError(str(exc) or type(exc).__name__) from exc
        kept = kept[:limit]
        if as_json:
            for item in kept:
                print(json_line(item))
            return 0
        table = Table("channel", "serial", "updated", "occupancy", box=None, pad_edge=False)
        for item in kept:
            updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item.updated_at / 1000))
            table.add_row(item.channel, str(item.serial), updated, str(item.occupancy))
        Console(highlight=False).print(table)
        return 0

    run_client(list_them(), server)
