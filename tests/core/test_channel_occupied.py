"""`channel.occupied`: when somebody enters the presence of a channel where nobody was, the
server sends a signal on `meta:channels` (docs/protocol.md §1, `meta:channels`), on every
node, and stores nothing."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as redis

from inproc_node import RecordingTransport, connect, running_node, settle
from roomcast.backends import open_backend
from roomcast.core.connection import Connection
from roomcast.core.node import Node
from roomcast.settings import Settings

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


async def send(conn: Connection, **request: Any) -> None:
    await conn.receive(json.dumps(request), is_text=True)
    await settle()


def occupied(transport: RecordingTransport) -> list[dict[str, Any]]:
    return [
        m
        for m in transport.messages()
        if m["action"] == "signal"
        and m["channel"] == "meta:channels"
        and m["name"] == "channel.occupied"
    ]


def signal_for(channel: str) -> dict[str, Any]:
    return {
        "action": "signal",
        "channel": "meta:channels",
        "client_id": None,
        "name": "channel.occupied",
        "data": {"channel": channel, "serial": 0},  # its latest serial: it has no events
    }


async def test_the_first_member_of_a_channel_announces_it_and_nothing_is_stored() -> None:
    async with running_node() as node:
        watcher_transport = RecordingTransport()
        watcher = await connect(node, "watcher", watcher_transport)
        await send(watcher, action="attach", channel="meta:channels", ref=1)
        alice = await connect(node, "alice", RecordingTransport())
        bob = await connect(node, "bob", RecordingTransport())

        await send(alice, action="presence", channel="room:new", op="enter", data={}, ref=2)
        assert occupied(watcher_transport) == [signal_for("room:new")]
        # Somebody is there already: bob's enter and alice's update announce nothing.
        await send(bob, action="presence", channel="room:new", op="enter", ref=3)
        await send(alice, action="presence", channel="room:new", op="update", data=1, ref=4)
        assert len(occupied(watcher_transport)) == 1
        # Empty again, then entered again: announced again.
        await send(alice, action="presence", channel="room:new", op="leave", ref=5)
        await send(bob, action="presence", channel="room:new", op="leave", ref=6)
        await send(bob, action="presence", channel="room:new", op="enter", ref=7)
        assert occupied(watcher_transport) == [signal_for("room:new")] * 2
        # meta:channels itself is never announced.
        await send(bob, action="presence", channel="meta:channels", op="enter", ref=8)
        assert len(occupied(watcher_transport)) == 2

        # A signal is not an event: the channel has none, so it is not listed or created.
        assert await node.store.list_channels("", 100) == []
        for conn in (watcher, alice, bob):
            await conn.finish(clean=True)


@asynccontextmanager
async def two_nodes_on_redis() -> AsyncIterator[tuple[Node, Node]]:
    """Two nodes in this process sharing a Redis store (a prefix of their own)."""
    prefix = f"test-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except redis.RedisError as exc:
        await client.aclose()
        pytest.fail(f"this test needs a Redis at {REDIS_URL} ({exc})", pytrace=False)
    url = f"{REDIS_URL}?prefix={prefix}"
    try:
        async with AsyncExitStack() as stack:
            nodes = []
            for _ in range(2):
                node = Node(open_backend(url), Settings(store=url, allow_anonymous=True))
                await node.start()
                stack.push_async_callback(node.stop)
                nodes.append(node)
            yield nodes[0], nodes[1]
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_a_member_on_one_node_is_announced_to_watchers_on_another() -> None:
    async with two_nodes_on_redis() as (one, other):
        watcher_transport = RecordingTransport()
        watcher = await connect(one, "watcher", watcher_transport)
        await send(watcher, action="attach", channel="meta:channels", ref=1)
        alice = await connect(other, "alice", RecordingTransport())
        await send(alice, action="presence", channel="room:far", op="enter", ref=2)
        for _ in range(200):  # over Redis: a few milliseconds
            if occupied(watcher_transport):
                break
            await settle()
            await asyncio.sleep(0.01)
        assert occupied(watcher_transport) == [signal_for("room:far")]
        await alice.finish(clean=True)
        await watcher.finish(clean=True)
