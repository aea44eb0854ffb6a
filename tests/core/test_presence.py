"""Presence members that a node holds with no connection (an MCP session's): one enter, one
leave, and a leave the store cannot take now is retried, as for a connection's."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inproc_node import RecordingTransport, connect, running_node, settle
from roomcast.core.node import Node
from roomcast.protocol.errors import Unavailable

CHANNEL = "room:held"
DATA = {"via": "mcp"}


async def watching(node: Node) -> RecordingTransport:
    """A connection attached to ``CHANNEL``, recording what it is sent."""
    transport = RecordingTransport()
    conn = await connect(node, "watcher", transport)
    frame = {"action": "attach", "channel": CHANNEL, "ref": 1}
    await conn.receive(json.dumps(frame), is_text=True)
    await settle()
    return transport


def changes(transport: RecordingTransport) -> list[tuple[str, str]]:
    return [(m["op"], m["client_id"]) for m in transport.messages() if m["action"] == "presence"]


async def present(node: Node) -> list[str]:
    return [m.client_id for m in await node.store.presence_members(CHANNEL)]


async def test_a_held_member_enters_once_and_leaves_once() -> None:
    async with running_node() as node:
        watcher = await watching(node)
        keeper = node.presence_keeper
        await keeper.hold(CHANNEL, "visitor", "s-1", DATA)
        await keeper.hold(CHANNEL, "visitor", "s-1", DATA)  # its next request
        assert await present(node) == ["visitor"]
        await keeper.release("visitor", "s-1", [CHANNEL], DATA)
        await keeper.release("visitor", "s-1", [CHANNEL], DATA)
        await settle()
        assert changes(watcher) == [("enter", "visitor"), ("leave", "visitor")]
        assert await present(node) == []


async def test_a_leave_the_store_cannot_take_is_retried_on_a_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_node() as node:
        watcher = await watching(node)
        keeper = node.presence_keeper
        await keeper.hold(CHANNEL, "visitor", "s-1", DATA)
        remove = node.store.presence_remove

        async def outage(*args: Any, **kwargs: Any) -> bool:
            raise Unavailable("the store is down")

        monkeypatch.setattr(node.store, "presence_remove", outage)
        await keeper.release("visitor", "s-1", [CHANNEL], DATA)  # does not raise
        assert await present(node) == ["visitor"]
        monkeypatch.setattr(node.store, "presence_remove", remove)  # the store is back
        await keeper.tick()
        await settle()
        assert await present(node) == []
        assert changes(watcher) == [("enter", "visitor"), ("leave", "visitor")]
