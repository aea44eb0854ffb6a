"""`channel.active` hints on `meta:channels` (docs/protocol.md §1): a message, a live-object
change or a person's enter hints a channel once per `activity_hint_s` per node, with the
serial an agent attaches from to miss none of it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from inproc_node import RecordingTransport, connect, running_node, settle
from roomcast.core.authz import Capability, Principal
from roomcast.core.connection import Connection
from roomcast.core.node import Node
from roomcast.protocol.codec import codec_for
from roomcast.protocol.messages import Publish

WINDOW_S = 0.3


async def send(conn: Connection, **request: Any) -> None:
    await conn.receive(json.dumps(request), is_text=True)
    await settle()


def hints(transport: RecordingTransport) -> list[Any]:
    return [
        m["data"]
        for m in transport.messages()
        if m["action"] == "signal" and m["name"] == "channel.active"
    ]


async def person(node: Node, client_id: str) -> Connection:
    """A connection without an API key, as a person's page makes."""
    principal = Principal(client_id, Capability.parse('{"*": ["*"]}'), "anonymous")
    connection_id, presence, resumed = await node.connect(principal, None)
    conn = Connection(
        node, RecordingTransport(), codec_for("json"), principal, connection_id, presence
    )
    await node.register(conn)
    conn.start(resumed)
    return conn


@asynccontextmanager
async def watched() -> AsyncIterator[tuple[Node, RecordingTransport, Connection]]:
    """A node, what a watcher of meta:channels receives, and alice (an API key's
    connection, as an agent's)."""
    async with running_node(activity_hint_s=WINDOW_S) as node:
        watching = RecordingTransport()
        watcher = await connect(node, "watcher", watching)
        await send(watcher, action="attach", channel="meta:channels", ref=1)
        alice = await connect(node, "alice", RecordingTransport())
        yield node, watching, alice
        for conn in (watcher, alice):
            await conn.finish(clean=True)


async def test_messages_hint_once_per_window_with_the_serial_before_them() -> None:
    async with watched() as (_, watching, alice):
        for ref in (2, 3, 4):  # serials 1-3: one hint, from before the first
            await send(alice, action="publish", channel="room:a", data="hi", ref=ref)
        await settle()
        assert hints(watching) == [{"channel": "room:a", "serial": 0}]

        await asyncio.sleep(WINDOW_S)  # the window passed: the next message hints again
        await send(alice, action="publish", channel="room:a", data="again", ref=5)
        op = {"type": "counter.create"}
        await send(alice, action="object", channel="room:b", op=op, ref=6)
        await settle()
        assert hints(watching)[1:] == [
            {"channel": "room:a", "serial": 3},
            {"channel": "room:b", "serial": 0},
        ]


async def test_a_person_entering_hints_with_the_latest_serial_an_agent_does_not() -> None:
    async with watched() as (node, watching, alice):
        await send(alice, action="publish", channel="room:c", data="first", ref=2)
        await asyncio.sleep(WINDOW_S)
        await send(alice, action="presence", channel="room:c", op="enter", ref=3)
        await settle()
        assert hints(watching) == [{"channel": "room:c", "serial": 0}]  # the publish's only

        dana = await person(node, "dana")
        await send(dana, action="presence", channel="room:c", op="enter", ref=4)
        await settle()
        assert hints(watching)[1:] == [{"channel": "room:c", "serial": 1}]
        # The hints are signals: meta:channels holds only the channel's announcement.
        listed = await node.store.list_channels("meta:", 10)
        assert [(c.channel, c.serial) for c in listed] == [("meta:channels", 1)]
        await dana.finish(clean=True)


async def test_a_batch_hints_from_before_its_first_message() -> None:
    async with watched() as (node, watching, alice):
        await send(alice, action="publish", channel="room:d", data="one", ref=2)
        await asyncio.sleep(WINDOW_S)
        requests = [Publish(channel="room:d", data=f"m{i}") for i in range(3)]
        assert await node.publish_batch(alice.principal, "room:d", requests) == [2, 3, 4]
        await settle()
        assert hints(watching)[1:] == [{"channel": "room:d", "serial": 1}]
