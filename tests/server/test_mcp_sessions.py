"""MCP sessions (server/mcp_sessions.py): what a session id says and names, and which
signals nodes take from each other."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from inproc_node import running_node
from polling import eventually
from roomcast.core.authz import Capability, Principal
from roomcast.core.node import Node
from roomcast.protocol.errors import Unavailable
from roomcast.protocol.messages import SignalEvent
from roomcast.server.mcp_sessions import (
    ENDED_CHANNEL,
    ENDED_SIGNAL,
    McpSession,
    McpSessions,
    signals_in,
)


def test_a_session_id_carries_its_client_id_and_only_this_server_s_parse() -> None:
    session = McpSession.new("visitor")
    assert McpSession.parse(session.session_id) == session
    assert McpSession.parse("no-dot-here") is None
    assert McpSession.parse("x.!!!") is None


def test_the_digest_names_a_session_without_its_id() -> None:
    session = McpSession.new("visitor")
    assert session.digest == McpSession.parse(session.session_id).digest  # type: ignore[union-attr]
    assert session.session_id not in session.digest and len(session.digest) == 40
    assert McpSession.new("visitor").digest != session.digest


def frame(*signals: dict[str, object]) -> bytes:
    items = [{"action": "signal", "channel": "meta:mcp-ended", **s} for s in signals]
    return json.dumps(items[0] if len(items) == 1 else items).encode()


def test_only_the_server_s_own_signals_count() -> None:
    ours = {"client_id": None, "name": "mcp.session-ended", "data": {"session": "d1"}}
    forged = {"client_id": "mallory", "name": "mcp.session-ended", "data": {"session": "d2"}}
    other = {"client_id": None, "name": "typing", "data": {"session": "d3"}}
    assert list(signals_in(frame(ours), "mcp.session-ended")) == [{"session": "d1"}]
    assert list(signals_in(frame(forged, ours, other), "mcp.session-ended")) == [{"session": "d1"}]
    assert list(signals_in(frame(forged), "mcp.session-ended")) == []
    assert list(signals_in(b"not json", "mcp.session-ended")) == []
    assert list(signals_in(b'[1, "x"]', "mcp.session-ended")) == []


# On one node in this process: the presence that a session holds, and how it ends.

PRINCIPAL = Principal("visitor", Capability.parse('{"*": ["*"]}'), "anonymous")


async def present(node: Node, room: str) -> list[str]:
    return [m.connection_id for m in await node.store.presence_members(room)]


async def test_a_session_that_ends_while_it_enters_a_room_leaves_it() -> None:
    """The DELETE (here on another node: its signal) comes while the enter waits on the
    store: the room it then enters must not keep a member nobody holds any more."""
    async with running_node() as node:
        sessions = McpSessions(node)
        session = McpSession.new("visitor")
        await sessions.enter(session, PRINCIPAL, "room:a")  # held, and listening
        entering, go_on = asyncio.Event(), asyncio.Event()
        hold = node.presence_keeper.hold

        async def slow_hold(*args: Any) -> None:
            entering.set()
            await go_on.wait()
            await hold(*args)

        node.presence_keeper.hold = slow_hold  # type: ignore[method-assign]
        task = asyncio.create_task(sessions.enter(session, PRINCIPAL, "room:b"))
        await entering.wait()
        ended = {"session": session.digest}
        await node.store.bus.publish_signal(
            SignalEvent(channel=ENDED_CHANNEL, client_id=None, name=ENDED_SIGNAL, data=ended)
        )
        go_on.set()
        await task
        await eventually(lambda: all_left(node))
        assert await present(node, "room:a") == [] and await present(node, "room:b") == []
        sessions.stop()


async def all_left(node: Node) -> bool:
    return not await present(node, "room:a") and not await present(node, "room:b")


async def test_a_delete_whose_signal_cannot_be_sent_still_ends_the_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_node() as node:
        sessions = McpSessions(node)
        session = McpSession.new("visitor")
        await sessions.enter(session, PRINCIPAL, "room:a")

        async def down(event: SignalEvent) -> None:
            raise Unavailable("the store is unreachable")

        node.store.bus.publish_signal = down  # type: ignore[method-assign]
        await sessions.close(session)
        assert await sessions.is_closed(session) and await present(node, "room:a") == []
        assert "could not tell other nodes" in caplog.text
        sessions.stop()
