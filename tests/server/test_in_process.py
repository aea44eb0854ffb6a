"""In-process connections (server/in_process.py): the SDK over memory pipes to a node in this
process, with the WebSocket's rules: credentials, presence at a clean close and at a loss,
resume, and a slow consumer closed with 4008 after the frames sent before it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from inproc_node import running_node
from polling import eventually
from roomcast.client import AuthError, Client, Event, connect
from roomcast.core.node import Node
from roomcast.protocol.errors import CLOSE_AUTH, CLOSE_SLOW_CONSUMER
from roomcast.server.in_process import PIPE_BYTES, InProcessDialer, InProcessSocket

KEY = "ops:in-process-test-secret"
URL = "http://in-process.invalid"  # never reached: the dial stays in this process
GRACE_S = 1.0


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    overrides = {"presence_grace_s": GRACE_S, "outbound_queue": 64, "publish_rate": 0}
    async with running_node(keys=(KEY,), **overrides) as node:
        yield node


class Dialer:
    """The node's dialer, keeping every socket it opened."""

    def __init__(self, node: Node) -> None:
        self.dial = InProcessDialer(node)
        self.sockets: list[InProcessSocket] = []

    async def __call__(self, url: str, open_timeout: float) -> InProcessSocket:
        sock = await self.dial(url, open_timeout)
        self.sockets.append(sock)
        return sock


async def client(node: Node, client_id: str, dial: Any = None) -> Client:
    return await connect(URL, client_id=client_id, key=KEY, dial=dial or InProcessDialer(node))


async def test_publish_stream_and_history_over_in_process_connections(node: Node) -> None:
    alice, bob = await client(node, "alice"), await client(node, "bob")
    events: list[Event] = []
    room = bob.channels.get("room:inproc")
    await room.subscribe(events.append)
    await alice.channels.get("room:inproc").publish("hello")
    async with alice.channels.get("room:inproc").stream() as answer:
        for word in ("one", " two", " three"):
            await answer.append(word)
    await eventually(lambda: events[-1].type == "update", what="the answer's end")
    assert [event.client_id for event in events] == ["alice"] * len(events)
    assert events[0].data == "hello"
    streamed = "".join(e.data for e in events[1:] if e.type in ("create", "append"))
    assert streamed == "one two three"
    [page] = [page async for page in room.history()]
    [first, second] = page.messages
    assert (first.data, second.data, second.status) == ("hello", "one two three", "complete")
    await alice.close()
    await bob.close()


async def test_a_wrong_key_is_refused_as_over_a_websocket(node: Node) -> None:
    with pytest.raises(AuthError):
        await connect(URL, client_id="eve", key="ops:wrong", dial=InProcessDialer(node))
    assert node.connections == {}


async def test_a_clean_close_leaves_at_once_and_a_resume_keeps_presence(node: Node) -> None:
    watcher = await client(node, "watcher")
    watched = watcher.channels.get("room:presence")
    await watched.attach()
    dialer = Dialer(node)
    alice, bob = await client(node, "alice", dialer), await client(node, "bob", dialer)
    for who in (alice, bob):
        await who.channels.get("room:presence").presence.enter({"kind": "human"})
    await eventually(lambda: _has(watched, "alice"), what="alice present")
    await eventually(lambda: _has(watched, "bob"), what="bob present")
    await alice.close()  # well within the grace period (GRACE_S)
    await eventually(lambda: _absent(watched, "alice"), within=GRACE_S / 2, what="alice gone")
    connection_id = bob.connection_id
    dialer.sockets[1].abort()  # bob's connection is lost; his client resumes it
    await eventually(lambda: len(dialer.sockets) == 3 and bob.is_connected, what="bob back")
    assert bob.connected is not None and bob.connected.resumed
    assert bob.connection_id == connection_id
    await asyncio.sleep(GRACE_S * 1.5)
    assert await _has(watched, "bob")  # a resumed connection keeps its membership
    await bob.close()
    await eventually(lambda: _absent(watched, "bob"), within=GRACE_S / 2, what="bob gone")
    await watcher.close()


async def _has(channel: Any, who: str) -> bool:
    return who in {member.client_id for member in await channel.presence.members()}


async def _absent(channel: Any, who: str) -> bool:
    return not await _has(channel, who)


async def test_a_lost_connection_leaves_presence_after_the_grace_period(node: Node) -> None:
    watcher = await client(node, "watcher")
    watched = watcher.channels.get("room:grace")
    await watched.attach()
    sock = await InProcessDialer(node)(f"{URL}/v1/ws?key={KEY}&client_id=carol", 5)
    assert actions(await sock.recv(False)) == ["connected"]
    enter = b'{"action":"presence","channel":"room:grace","op":"enter","data":null,"ref":1}'
    await sock.send(enter, text=True)
    await eventually(lambda: _has(watched, "carol"), what="carol present")
    loop = asyncio.get_running_loop()
    sock.abort()
    lost_at = loop.time()
    await asyncio.sleep(GRACE_S / 2)
    assert await _has(watched, "carol")  # still within the grace period
    await eventually(lambda: _absent(watched, "carol"), what="carol gone")
    assert loop.time() - lost_at >= GRACE_S
    await watcher.close()


async def test_a_client_that_reads_nothing_is_closed_as_a_slow_consumer(node: Node) -> None:
    sock = await InProcessDialer(node)(f"{URL}/v1/ws?key={KEY}&client_id=sleepy", 5)
    await sock.send(b'{"action":"attach","channel":"room:flood","ref":1}', text=True)
    seen: list[str] = []
    while "attached" not in seen:
        seen += actions(await asyncio.wait_for(sock.recv(False), 10))
    assert seen == ["connected", "attached"]
    publisher = await client(node, "publisher")
    room = publisher.channels.get("room:flood")
    big = "x" * 16_000
    # More than the pipe holds and then more than outbound_queue (64) messages queued.
    count = PIPE_BYTES // len(big) + 200
    await asyncio.gather(*(room.publish(big) for _ in range(count)))
    received = 0
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            frame = await asyncio.wait_for(sock.recv(False), 10)
            received += actions(frame).count("event")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_SLOW_CONSUMER
    assert 0 < received < count  # what was sent before the close arrived first
    await publisher.close()


async def test_a_close_by_the_server_reaches_the_client_after_what_was_sent_before() -> None:
    sock = InProcessSocket()
    assert sock.server.send_now(b'{"action":"heartbeat"}')
    await sock.server.close(CLOSE_AUTH, "token expired")
    assert sock.server.send_now(b'{"action":"heartbeat"}')  # dropped, as on a closed socket
    assert actions(await sock.recv(False)) == ["heartbeat"]
    with pytest.raises(ConnectionClosed) as closed:
        await sock.recv(False)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (CLOSE_AUTH, "token expired")
    # The server reads nothing more: its end sees the close.
    assert await sock.server.receive() == Close(CLOSE_AUTH, "token expired")


async def test_a_connection_the_server_closes_is_finished_there(node: Node) -> None:
    sock = await InProcessDialer(node)(f"{URL}/v1/ws?key={KEY}&client_id=dora", 5)
    assert actions(await sock.recv(False)) == ["connected"]
    [conn] = node.connections.values()
    await conn.close(CLOSE_AUTH, "token expired")  # as at a token's expiry
    with pytest.raises(ConnectionClosed) as closed:
        await sock.recv(False)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_AUTH
    await eventually(lambda: node.connections == {}, what="the server to finish it")


def actions(frame: bytes) -> list[str]:
    """The actions of the messages in one frame."""
    decoded = msgspec.json.decode(frame)
    return [message["action"] for message in (decoded if isinstance(decoded, list) else [decoded])]
