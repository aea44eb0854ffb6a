"""The keepalive of ``roomcast serve``'s WebSocket protocol (server/uvicorn_websocket.py):
a ping goes out in the same write as an idle connection's ``heartbeat``, a peer that answers
stays, and a peer that answers no ping is closed with 1011. Read with a sans-I/O client on a
plain socket, so each ping frame and the bytes it came with are seen as they arrive. And an
open connection keeps nothing of its handshake."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from asgi_echo import echo, uvicorn_serving
from roomcast.server.uvicorn_websocket import (
    DIRECT_SEND,
    PongDeadlines,
    RoomcastWebSocketProtocol,
)
from roomcast.testing import ServerProcess

HEARTBEAT_S = 1.0


@pytest.fixture(scope="module")
def beating_server(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    env = {**test_env, "ROOMCAST_HEARTBEAT_S": str(HEARTBEAT_S)}
    with ServerProcess(env=env) as proc:
        yield proc


class RawClient:
    """A WebSocket client that answers pings only when told to, and keeps each read's
    frames together."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.protocol: ClientProtocol | None = None
        self.reads: list[list[Frame]] = []  # the frames of each read, in order

    @classmethod
    async def open(cls, server: ServerProcess, client_id: str) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        client = cls(reader, writer)
        protocol = client.protocol = ClientProtocol(
            parse_uri(f"{server.ws_url}?client_id={client_id}")
        )
        protocol.send_request(protocol.connect())
        writer.write(b"".join(protocol.data_to_send()))
        await client.read(answer=True)  # the handshake's response (and maybe `connected`)
        return client

    async def read(self, *, answer: bool) -> list[Frame]:
        """One read's frames; with ``answer``, the client's pongs go out."""
        assert self.protocol is not None
        data = await self.reader.read(65536)
        if not data:
            self.protocol.receive_eof()
        else:
            self.protocol.receive_data(data)
        frames = [e for e in self.protocol.events_received() if isinstance(e, Frame)]
        self.reads.append(frames)
        if answer:
            self.writer.write(b"".join(self.protocol.data_to_send()))
        else:
            self.protocol.data_to_send()  # dropped: the server hears no pong
        return frames

    async def read_for(self, seconds: float, *, answer: bool) -> None:
        """Read until ``seconds`` pass or the server closes."""
        deadline = time.monotonic() + seconds
        while not self.closed_by_server():
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    if not await self.read(answer=answer) and self.reader.at_eof():
                        return
            except TimeoutError:
                return

    def closed_by_server(self) -> bool:
        return any(f.opcode is Opcode.CLOSE for frames in self.reads for f in frames)

    def close_code(self) -> int | None:
        for frames in self.reads:
            for frame in frames:
                if frame.opcode is Opcode.CLOSE:
                    return int.from_bytes(frame.data[:2], "big")
        return None

    def close(self) -> None:
        self.writer.close()


def heartbeats(frames: list[Frame]) -> int:
    return sum(
        1 for f in frames if f.opcode is Opcode.TEXT and json.loads(f.data)["action"] == "heartbeat"
    )


async def test_an_idle_connection_gets_each_ping_with_its_heartbeat(
    beating_server: ServerProcess,
) -> None:
    client = await RawClient.open(beating_server, "idle-answering")
    try:
        await client.read_for(6 * HEARTBEAT_S, answer=True)
        assert not client.closed_by_server()  # it answers: it stays
        with_pings = [
            frames for frames in client.reads if any(f.opcode is Opcode.PING for f in frames)
        ]
        assert len(with_pings) >= 3
        # One write each: every ping came in the same read as a heartbeat.
        assert all(heartbeats(frames) == 1 for frames in with_pings)
    finally:
        client.close()


async def test_a_peer_that_answers_no_ping_is_closed_with_1011(
    beating_server: ServerProcess,
) -> None:
    client = await RawClient.open(beating_server, "idle-silent")
    try:
        # The first ping goes with the first heartbeat (within about 1.5 heartbeats), and
        # its pong is due one heartbeat later.
        await client.read_for(10 * HEARTBEAT_S, answer=False)
        assert client.close_code() == 1011
    finally:
        client.close()


async def test_pong_deadlines_shared_by_connections_close_only_the_silent_ones(
    beating_server: ServerProcess,
) -> None:
    """All connections' pong deadlines share one timer: the peers that answer stay, the
    ones that do not are closed, whichever order their pings went in."""
    clients = [await RawClient.open(beating_server, f"shared-{k}") for k in range(6)]
    try:
        await asyncio.gather(
            *(c.read_for(10 * HEARTBEAT_S, answer=k % 2 == 0) for k, c in enumerate(clients))
        )
        codes = [c.close_code() for c in clients]
        assert codes == [None, 1011, None, 1011, None, 1011]
        for answering in clients[::2]:
            assert sum(any(f.opcode is Opcode.PING for f in r) for r in answering.reads) >= 5
    finally:
        for client in clients:
            client.close()


async def test_an_open_connection_keeps_no_handshake_request_or_response() -> None:
    """Once the 101 is written, the protocol drops the handshake's request and response
    (uvicorn reads them only before), and the connection works on without them."""

    async with (
        uvicorn_serving(echo, ws=RoomcastWebSocketProtocol) as (port, server),
        ws_connect(f"ws://127.0.0.1:{port}/") as client,
    ):
        await client.send("before")
        assert await client.recv() == "before"
        connections = server.server_state.connections
        [protocol] = [c for c in connections if isinstance(c, RoomcastWebSocketProtocol)]
        assert protocol.handshake_complete
        assert protocol.request is None and protocol.response is None
        # websockets' parser still refers to the request: it keeps no headers
        parsed = protocol.conn.parser.gi_frame.f_locals["request"]
        assert parsed.path == "/" and len(parsed.headers) == 0
        await client.send("after")
        assert await client.recv() == "after"


class RecordedTransport:
    """A transport that notes each write before passing it on."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport, self.writes = transport, writes

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@contextlib.asynccontextmanager
async def recorded_server(app: Any) -> AsyncIterator[tuple[int, list[bytes]]]:
    """uvicorn with the protocol of ``roomcast serve`` on ``app``; every write its
    connections make, in order."""
    writes: list[bytes] = []

    class Recorded(RoomcastWebSocketProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(RecordedTransport(transport, writes))  # type: ignore[arg-type]

    async with uvicorn_serving(app, ws=Recorded) as (port, _):
        yield port, writes


async def test_the_handshake_response_goes_out_with_the_first_frame() -> None:
    async def greet(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await asyncio.sleep(0)  # the app's first frame comes a turn later, as `connected` does
        assert scope["extensions"][DIRECT_SEND](b"hello", True)
        while (await receive())["type"] == "websocket.receive":
            pass

    async with recorded_server(greet) as (port, writes):
        async with ws_connect(f"ws://127.0.0.1:{port}/", compression=None) as client:
            assert await client.recv() == "hello"
        [first, *_] = writes
        assert first.startswith(b"HTTP/1.1 101 ") and first.endswith(b"\x81\x05hello")


async def test_the_handshake_response_goes_alone_when_no_frame_follows_soon() -> None:
    async def quiet(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.sleep(0.5)
        await send({"type": "websocket.send", "text": "late"})
        while (await receive())["type"] == "websocket.receive":
            pass

    async with recorded_server(quiet) as (port, writes):
        async with ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=0.4) as client:
            assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 101 ")
            assert await client.recv() == "late"


class Pinged:
    """What PongDeadlines reads of a connection: its ping in flight, and its time-out."""

    def __init__(self, fails: bool = False) -> None:
        self.pending_ping_payload: bytes | None = None
        self.timed_out = 0
        self.fails = fails

    def ping(self, deadlines: PongDeadlines) -> None:
        self.pending_ping_payload = bytes(4)  # a new object each time: equal is not enough
        deadlines.add(cast(RoomcastWebSocketProtocol, self), self.pending_ping_payload)

    def keepalive_timeout(self) -> None:
        self.timed_out += 1
        if self.fails:
            raise RuntimeError("the transport is gone")


async def test_pong_deadlines_time_out_only_unanswered_pings_and_go_on_past_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    deadlines = PongDeadlines(asyncio.get_running_loop(), 0.05)
    silent, failing, answered, stale = Pinged(), Pinged(fails=True), Pinged(), Pinged()
    for connection in (failing, silent, answered, stale):
        connection.ping(deadlines)
    answered.pending_ping_payload = None  # its pong came
    stale.ping(deadlines)  # a newer ping: the first one's deadline no longer counts
    await asyncio.sleep(0.2)
    assert [c.timed_out for c in (silent, failing, answered, stale)] == [1, 1, 0, 1]
    assert "ping went unanswered" in caplog.text
