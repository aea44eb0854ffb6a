"""Load shedding (docs/protocol.md §8): over `max_connections` the WebSocket upgrade and the HTTP
API answer 503 with Retry-After (a server without the ASGI denial-response extension closes
the accepted WebSocket with 50300 and 1013 instead); over `max_pending_writes` a write is
refused with 50300 while its connection stays usable."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from roomcast.client import Overloaded, Unavailable, connect
from roomcast.server import create_app
from roomcast.server.overload import RETRY_CONNECTIONS_S, Overload
from roomcast.settings import Settings
from roomcast.testing import ServerProcess, WireClient


def room() -> str:
    return f"room:{uuid.uuid4().hex[:10]}"


async def refused(url: str) -> InvalidStatus:
    """How the server refused a WebSocket upgrade."""
    with pytest.raises(InvalidStatus) as refusal:
        async with ws_connect(url, open_timeout=10):
            pass
    return refusal.value


async def eventually_status(http: httpx.AsyncClient, path: str, status: int) -> httpx.Response:
    async with asyncio.timeout(10):
        while True:
            response = await http.get(path)
            if response.status_code == status:
                return response
            await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def small(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    # No in-process agents: each would hold one of the three connections.
    env = {**test_env, "ROOMCAST_MAX_CONNECTIONS": "3", "ROOMCAST_AGENTS": "none"}
    with ServerProcess(env=env) as proc:
        yield proc


@pytest.fixture
async def http(small: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=small.url, timeout=30) as client:
        yield client


def assert_shed(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    error = response.json()["error"]
    assert error["code"] == 50300
    assert "overloaded" in error["message"]
    assert error["correlation_id"] == response.headers["X-Correlation-Id"]


async def test_an_upgrade_over_max_connections_gets_503_and_http_answers_503(
    small: ServerProcess, http: httpx.AsyncClient
) -> None:
    channel = room()
    assert (await http.get("/v1/channels")).status_code == 200
    clients = [await WireClient.connect(small.ws_url, client_id=f"c{i}") for i in range(3)]
    try:
        # Refused before the upgrade, so a load balancer can try another node.
        response = (await refused(small.ws_url + "?client_id=late")).response
        assert response.status_code == 503
        assert response.headers["Retry-After"] == str(RETRY_CONNECTIONS_S)
        assert response.headers["Content-Type"] == "application/json"
        error = json.loads(bytes(response.body))["error"]
        assert error["code"] == 50300
        assert error["message"] == "server overloaded, retry later"
        assert error["correlation_id"] == response.headers["X-Correlation-Id"]
        # The SDK told not to wait raises it, with the server's Retry-After.
        with pytest.raises(Overloaded) as overloaded:
            await connect(small.url, client_id="late", overload_timeout=0)
        assert isinstance(overloaded.value, Unavailable) and overloaded.value.code == 50300
        assert overloaded.value.retry_after == RETRY_CONNECTIONS_S

        assert_shed(await http.get("/v1/channels"))
        assert_shed(await http.post(f"/v1/channels/{channel}/messages", json={"data": 1}))
        assert_shed(await http.get(f"/v1/channels/{channel}/events"))
        for probe in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert (await http.get(probe)).status_code == 200, probe

        # The connections already open are served as before.
        reply = await clients[0].request("publish", channel=channel, data="still served")
        assert reply["action"] == "ok" and reply["serial"] == 1
    finally:
        await clients[0].close()

    # One slot free: the API answers again, and a new connection gets in.
    await eventually_status(http, "/v1/channels", 200)
    late = await WireClient.connect(small.ws_url, client_id="late")
    try:
        assert late.connected["action"] == "connected"
    finally:
        for client in (late, *clients[1:]):
            await client.close()
    await eventually_status(http, "/v1/channels", 200)


async def test_sse_streams_count_as_connections(
    small: ServerProcess, http: httpx.AsyncClient
) -> None:
    await eventually_status(http, "/v1/channels", 200)
    clients = [await WireClient.connect(small.ws_url, client_id=f"s{i}") for i in range(2)]
    try:
        async with http.stream("GET", f"/v1/channels/{room()}/events") as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            assert (await asyncio.wait_for(anext(lines), 10)).startswith("event: attached")
            assert (await refused(small.ws_url)).response.status_code == 503
    finally:
        for client in clients:
            await client.close()
    await eventually_status(http, "/v1/channels", 200)


class AsgiWebSocket:
    """Drives the app's ``/v1/ws`` in process, with or without the denial-response extension,
    and records what the app sends."""

    def __init__(self, *, denial_response: bool) -> None:
        self.scope: dict[str, Any] = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "scheme": "ws",
            "path": "/v1/ws",
            "raw_path": b"/v1/ws",
            "query_string": b"client_id=late",
            "headers": [(b"host", b"127.0.0.1:8000")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "subprotocols": [],
            "extensions": {"websocket.http.response": {}} if denial_response else {},
        }
        self.sent: list[dict[str, Any]] = []
        self._inbox = [{"type": "websocket.connect"}]

    async def receive(self) -> dict[str, Any]:
        if self._inbox:
            return self._inbox.pop(0)
        return {"type": "websocket.disconnect", "code": 1006}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def run(self, app: Any) -> list[dict[str, Any]]:
        await app(self.scope, self.receive, self.send)
        return self.sent


def full_app() -> Any:
    app = create_app(Settings.load({}, store="memory://", max_connections=1), manage_node=False)
    app.state.overload.websockets = 1
    return app


async def test_a_full_node_answers_the_upgrade_with_503_when_the_server_can() -> None:
    start, body = await AsgiWebSocket(denial_response=True).run(full_app())
    assert start["type"] == "websocket.http.response.start" and start["status"] == 503
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    assert headers["retry-after"] == str(RETRY_CONNECTIONS_S)
    error = json.loads(body["body"])["error"]
    assert error["code"] == 50300 and error["correlation_id"] == headers["x-correlation-id"]


async def test_without_the_denial_extension_a_full_node_accepts_then_closes_1013() -> None:
    """The fallback for an ASGI server that cannot answer the upgrade with a response."""
    accept, error, close = await AsgiWebSocket(denial_response=False).run(full_app())
    assert accept["type"] == "websocket.accept"
    assert error["type"] == "websocket.send"
    assert json.loads(error["text"]) == {
        "action": "error",
        "code": 50300,
        "message": "server overloaded, retry later",
    }
    assert close == {
        "type": "websocket.close",
        "code": 1013,
        "reason": "server overloaded, retry later",
    }


@pytest.fixture(scope="module")
def backlogged(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    with ServerProcess(env={**test_env, "ROOMCAST_MAX_PENDING_WRITES": "20"}) as proc:
        yield proc


async def test_writes_over_the_backlog_bound_get_50300_and_the_connection_stays_usable(
    backlogged: ServerProcess,
) -> None:
    """500 publishes in one frame reach the store before its writer can commit any: the
    first 20 are queued, the rest are refused at once, and nothing refused is stored."""
    channel = room()
    async with await WireClient.connect(backlogged.ws_url, client_id="flood") as ws:
        await ws.send(
            [{"action": "publish", "ref": i, "channel": channel, "data": i} for i in range(1, 501)]
        )
        replies = [
            await ws.next(lambda m, i=i: m.get("ref") == i, timeout=20) for i in range(1, 501)
        ]
        ok = [r for r in replies if r["action"] == "ok"]
        shed = [r for r in replies if r["action"] == "error"]
        assert len(ok) + len(shed) == 500
        assert 1 <= len(ok) <= 20
        assert len(shed) >= 480
        assert {r["code"] for r in shed} == {50300}
        assert all(r["channel"] == channel for r in shed)
        assert sorted(r["serial"] for r in ok) == list(range(1, len(ok) + 1))

        # Not closed: the next publish goes through once the backlog has drained.
        after = await ws.request("publish", channel=channel, data="after")
        assert after["action"] == "ok" and after["serial"] == len(ok) + 1
        assert (await ws.request("ping"))["action"] == "pong"
        history = await ws.request("history", channel=channel, limit=1000)
        assert [m["data"] for m in history["messages"]] == [r["ref"] for r in ok] + ["after"]


def test_overload_is_either_bound() -> None:
    overload = Overload(Settings(max_connections=2, max_pending_writes=3), [object()])
    assert overload.reason() is None
    overload.websockets = 1
    assert overload.full and overload.reason() is not None  # 1 WebSocket + 1 SSE stream
    overload.websockets = 0
    overload.take_writes(3)
    shed = overload.reason()
    assert shed is not None and "writes" in shed[0] and shed[1] >= 1
    with pytest.raises(Exception, match="retry later"):
        overload.take_writes(1)
    overload.release_writes(3)
    overload.take_writes(10)  # one batch larger than the bound still goes when nothing waits
    assert overload.pending_writes == 10


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        Settings.load({}, max_connections=0)
    with pytest.raises(ValueError, match="max_pending_writes"):
        Settings.load({"ROOMCAST_MAX_PENDING_WRITES": "-1"})


# ---------------------------------------------------------------- slow request headers

PARTIAL = b"GET /v1/channels HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Never: "  # no end of headers


@pytest.fixture(scope="module")
def impatient(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    env = {**test_env, "ROOMCAST_HEADER_TIMEOUT_S": "1", "ROOMCAST_KEEP_ALIVE_S": "1"}
    with ServerProcess(env={**env, "ROOMCAST_AGENTS": "none"}) as proc:
        yield proc


class Raw:
    """TCP connections to a server, each of which has sent its ``first`` bytes."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.writers: list[asyncio.StreamWriter] = []

    async def open(self, first: bytes = PARTIAL) -> tuple[asyncio.StreamReader, Any]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        self.writers.append(writer)
        writer.write(first)
        await writer.drain()
        return reader, writer

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


@contextlib.asynccontextmanager
async def raw(server: ServerProcess) -> AsyncIterator[Raw]:
    connections = Raw(server)
    try:
        yield connections
    finally:
        connections.close()
        for writer in connections.writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def until_closed(reader: asyncio.StreamReader, within_s: float = 15) -> bytes:
    """What the server sent before it closed the connection."""
    async with asyncio.timeout(within_s):
        return await reader.read()


async def test_connections_that_never_finish_their_headers_are_closed_at_the_deadline(
    impatient: ServerProcess,
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with raw(impatient) as connections:
        partial = [(await connections.open())[0] for _ in range(300)]
        silent, _ = await connections.open(b"")
        trickling, writer = await connections.open(b"GET / HTTP/1.1\r\n")

        async def trickle() -> None:  # one header line every 0.2 s: the deadline stays
            while not trickling.at_eof():
                writer.write(b"X-Slow: 1\r\n")
                await asyncio.sleep(0.2)

        dripping = asyncio.ensure_future(trickle())
        try:
            answers = await asyncio.gather(*(until_closed(r) for r in [*partial, trickling]))
            assert await until_closed(silent) == b""  # nothing was asked: nothing is answered
        finally:
            dripping.cancel()
    assert loop.time() - started >= 0.9
    assert {a.split(b"\r\n", 1)[0] for a in answers} == {b"HTTP/1.1 408 Request Timeout"}
    async with httpx.AsyncClient(base_url=impatient.url, timeout=10) as http:
        assert (await http.get("/v1/channels")).status_code == 200


async def test_a_client_still_sending_at_the_deadline_gets_its_408_and_a_clean_close(
    impatient: ServerProcess,
) -> None:
    """Closing a socket with unread data resets the connection, and the client may lose the
    answer: the server half-closes after the 408 and drops what still comes."""
    async with raw(impatient) as connections:
        readers = []
        for _ in range(20):
            reader, writer = await connections.open(b"GET / HTTP/1.1\r\n")
            readers.append((reader, writer))

        async def flood(reader: asyncio.StreamReader, writer: Any) -> None:
            while not reader.at_eof():  # a header line every few ms, past the deadline
                writer.write(b"X-Slow: 1\r\n")
                await asyncio.sleep(0.003)

        flooding = [asyncio.ensure_future(flood(r, w)) for r, w in readers]
        try:
            answers = await asyncio.gather(*(until_closed(r) for r, _ in readers))
        finally:
            for task in flooding:
                task.cancel()
    assert {a.split(b"\r\n", 1)[0] for a in answers} == {b"HTTP/1.1 408 Request Timeout"}


async def test_an_idle_kept_alive_connection_is_closed_after_keep_alive_s(
    impatient: ServerProcess,
) -> None:
    async with raw(impatient) as connections:
        reader, _ = await connections.open(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = await until_closed(reader, within_s=4)  # uvicorn's own default is 5 s
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.count(b"HTTP/1.1") == 1


async def test_half_open_connections_count_against_max_connections(
    test_env: dict[str, str],
) -> None:
    env = {**test_env, "ROOMCAST_MAX_CONNECTIONS": "3", "ROOMCAST_AGENTS": "none"}
    with ServerProcess(env=env) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            async with raw(server) as connections:
                for _ in range(3):
                    await connections.open()
                assert_shed(await eventually_status(http, "/v1/channels", 503))
                late = server.ws_url + "?client_id=late"
                assert (await refused(late)).response.status_code == 503
            await eventually_status(http, "/v1/channels", 200)
            async with await WireClient.connect(server.ws_url, client_id="late") as client:
                assert client.connected["action"] == "connected"


def test_header_and_keep_alive_timeouts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="header_timeout_s"):
        Settings.load({"ROOMCAST_HEADER_TIMEOUT_S": "0"})
    with pytest.raises(ValueError, match="keep_alive_s"):
        Settings.load({}, keep_alive_s=-1)
