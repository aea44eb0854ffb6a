"""A full server (`max_connections`) refuses the WebSocket upgrade with 503 and Retry-After:
the SDK waits that out and connects once a slot frees up, on the first connection as on a
reconnect, while other refusals still fail at once."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvicorn
from tcp_proxy import TcpProxy
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from polling import eventually
from roomcast.client import AuthError, Backoff, Client, Overloaded, StateChange, connect
from roomcast.client.link import retry_after_s
from roomcast.server import create_app
from roomcast.server.overload import RETRY_CONNECTIONS_S
from roomcast.settings import Settings
from roomcast.testing import ServerProcess, WireClient, free_port


class RecordingBackoff(Backoff):
    """A backoff that records what each refusal asked for and the delay it gave; the first
    ``first_delays`` delays are fixed, so a test can act before the client tries again."""

    def __init__(self, *, first_delays: tuple[float, ...] = (), **kwargs: float) -> None:
        super().__init__(**kwargs)
        self.first_delays = list(first_delays)
        self.asked: list[float | None] = []
        self.delays: list[float] = []

    def next_delay(self) -> float:
        if self.first_delays:
            self.attempts += 1
            return self.first_delays.pop(0)
        return super().next_delay()

    def next_delay_after(self, retry_after: float | None) -> float:
        delay = super().next_delay_after(retry_after)
        self.asked.append(retry_after)
        self.delays.append(delay)
        return delay


@pytest.fixture(scope="module")
def full(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    """A server that holds one connection at a time."""
    with ServerProcess(env={**test_env, "ROOMCAST_MAX_CONNECTIONS": "1"}) as proc:
        yield proc


async def take_the_slot(server: ServerProcess, client_id: str) -> WireClient:
    """Connect as soon as the server has room (a connection closed by the previous step may
    not be counted out yet)."""
    async with asyncio.timeout(10):
        while True:
            try:
                return await WireClient.connect(server.ws_url, client_id=client_id)
            except InvalidStatus as exc:
                assert exc.response.status_code == 503
                await asyncio.sleep(0.02)


async def start(client: Client) -> Client:
    await client.start()
    return client


async def test_connect_to_a_full_server_gets_in_once_a_slot_frees_up(full: ServerProcess) -> None:
    holder = await take_the_slot(full, "holder")
    backoff = RecordingBackoff(initial=0.05, maximum=0.5)
    connecting = asyncio.create_task(start(Client(full.url, client_id="late", backoff=backoff)))
    try:
        await eventually(lambda: len(backoff.asked) >= 2)
        assert not connecting.done()
        # Each refusal carried the server's Retry-After, waited out up to the maximum.
        assert set(backoff.asked) == {RETRY_CONNECTIONS_S}
        assert all(delay == 0.5 for delay in backoff.delays)
    finally:
        await holder.close()
    client = await asyncio.wait_for(connecting, 10)
    try:
        assert client.state == "connected" and client.client_id == "late"
        assert await client.channels.get("room:overload-first").publish("in") >= 1
    finally:
        await client.close()


async def test_the_first_connect_gives_up_after_overload_timeout(full: ServerProcess) -> None:
    holder = await take_the_slot(full, "holder")
    try:
        backoff = RecordingBackoff(initial=0.01, maximum=1.0)
        began = time.monotonic()
        with pytest.raises(Overloaded, match="overloaded") as refused:
            await connect(full.url, client_id="late", backoff=backoff, overload_timeout=2.5)
        elapsed = time.monotonic() - began
        assert refused.value.code == 50300 and refused.value.retry_after == RETRY_CONNECTIONS_S
        # Retry-After (5 s) capped at the backoff's maximum (1 s): not a retry every 10 ms.
        assert 2.5 <= elapsed < 5
        assert 2 <= len(backoff.delays) <= 4 and all(d == 1.0 for d in backoff.delays)
    finally:
        await holder.close()


async def test_a_reconnect_to_a_full_server_waits_for_the_retry_after(full: ServerProcess) -> None:
    proxy = await TcpProxy(full.port).start()
    # The first reconnect waits 2 s, in which another client takes the only slot.
    backoff = RecordingBackoff(initial=0.05, maximum=0.5, first_delays=(2.0,))
    changes: list[StateChange] = []
    holder: WireClient | None = None
    client = await connect(proxy.url, client_id="dropped", backoff=backoff)
    try:
        client.on("resumed", changes.append)
        client.on("connected", changes.append)
        proxy.cut()
        holder = await take_the_slot(full, "holder")
        assert client.state == "disconnected"
        await eventually(lambda: RETRY_CONNECTIONS_S in backoff.asked)
        assert client.state == "disconnected" and not changes
        await holder.close()
        await eventually(lambda: client.state == "connected")
        assert [change.event for change in changes] == ["resumed"]
        # Every refusal was followed by the Retry-After delay (capped at 0.5 s), no less.
        refused = [d for a, d in zip(backoff.asked, backoff.delays, strict=True) if a is not None]
        assert refused and all(delay == 0.5 for delay in refused)
        assert await client.channels.get("room:overload-again").publish("back") >= 1
    finally:
        await client.close()
        if holder is not None:
            await holder.close()
        await proxy.aclose()


@pytest.fixture
async def sheds_after_the_upgrade() -> AsyncIterator[str]:
    """A server (in this process) for an ASGI server without the denial-response extension:
    a full node accepts the WebSocket, then sends 50300 and closes it with 1013."""
    app = create_app(Settings.load({}, store="memory://", max_connections=1))

    async def without_denial(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            extensions = dict(scope.get("extensions") or {})
            extensions.pop("websocket.http.response", None)
            scope = {**scope, "extensions": extensions}
        await app(scope, receive, send)

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(without_denial, host="127.0.0.1", port=port, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    await eventually(lambda: server.started)
    yield f"ws://127.0.0.1:{port}/v1/ws"
    server.should_exit = True
    await serving


async def test_a_server_that_closes_1013_after_the_upgrade_is_retried_too(
    sheds_after_the_upgrade: str,
) -> None:
    url = sheds_after_the_upgrade
    holder = await WireClient.connect(url, client_id="holder")
    try:
        async with ws_connect(url) as refused:
            error = json.loads(await refused.recv())
            await refused.wait_closed()
        assert error["code"] == 50300 and refused.close_code == 1013
        backoff = RecordingBackoff(initial=0.05, maximum=0.2)
        connecting = asyncio.create_task(start(Client(url, client_id="late", backoff=backoff)))
        await eventually(lambda: len(backoff.asked) >= 2)
        assert set(backoff.asked) == {None}  # no Retry-After: the backoff's own delays
        assert not connecting.done()
    finally:
        await holder.close()
    client = await asyncio.wait_for(connecting, 10)
    assert client.state == "connected"
    await client.close()


async def test_refused_credentials_fail_at_once(server: ServerProcess) -> None:
    backoff = RecordingBackoff()
    began = time.monotonic()
    with pytest.raises(AuthError):
        await connect(server.url, token="not-a-token", backoff=backoff)
    assert time.monotonic() - began < 2 and backoff.delays == []


class UpgradeRefuser:
    """An HTTP server that answers every WebSocket upgrade with one fixed response, and
    counts the attempts."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.attempts = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.attempts += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(self.response)
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/v1/ws"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


def http(status: str, body: bytes = b"", headers: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}Connection: close\r\n\r\n"
    ).encode() + body


@pytest.fixture
async def refuser_401() -> AsyncIterator[tuple[UpgradeRefuser, str]]:
    refuser = UpgradeRefuser(http("401 Unauthorized"))
    async with refuser as url:
        yield refuser, url


async def test_a_401_at_the_upgrade_fails_at_once_with_auth_error(
    refuser_401: tuple[UpgradeRefuser, str],
) -> None:
    refuser, url = refuser_401
    with pytest.raises(AuthError, match="HTTP 401"):
        await connect(url, client_id="alice", backoff=RecordingBackoff())
    assert refuser.attempts == 1


async def test_a_403_or_404_at_the_upgrade_fails_at_once_with_connection_error() -> None:
    for status in ("403 Forbidden", "404 Not Found"):
        refuser = UpgradeRefuser(http(status))
        async with refuser as url:
            with pytest.raises(ConnectionError, match="no roomcast WebSocket"):
                await connect(url, client_id="alice")
        assert refuser.attempts == 1


async def test_a_503_from_a_proxy_without_retry_after_is_retried_with_the_backoff() -> None:
    refuser = UpgradeRefuser(http("503 Service Unavailable", b"<html>busy</html>"))
    backoff = RecordingBackoff(initial=0.05, maximum=0.2)
    async with refuser as url:
        with pytest.raises(Overloaded, match="HTTP 503") as refused:
            await connect(url, client_id="alice", backoff=backoff, overload_timeout=0.5)
    assert refused.value.retry_after is None
    assert refuser.attempts >= 3 and set(backoff.asked) == {None}
    assert all(delay <= 0.2 for delay in backoff.delays)


def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    assert retry_after_s("5") == 5.0
    assert retry_after_s(" 12 ") == 12.0
    assert retry_after_s(None) is None
    assert retry_after_s("soon") is None
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= (retry_after_s(in_a_minute) or 0) <= 60
    long_ago = email.utils.formatdate(0, usegmt=True)
    assert retry_after_s(long_ago) == 0.0


def test_a_retry_after_is_waited_out_capped_at_the_maximum_and_spread() -> None:
    low = Backoff(initial=0.1, maximum=10.0, rng=lambda: 0.0)
    assert low.next_delay_after(None) == 0.0  # no Retry-After: the backoff's own draw
    assert low.next_delay_after(5) == 5.0  # at least what the server asked
    assert low.next_delay_after(3600) == 10.0  # never past the maximum
    assert low.attempts == 3
    high = Backoff(initial=0.1, maximum=10.0, rng=lambda: 0.999999)
    assert 5.99 < high.next_delay_after(5) < 6.0  # spread over a fifth more
    # The spread stops at the maximum.
    assert high.next_delay_after(9) == pytest.approx(10.0, abs=1e-3)
    # The backoff's own draw when that is longer.
    grown = Backoff(initial=8.0, maximum=10.0, rng=lambda: 0.999999)
    assert grown.next_delay_after(1) == pytest.approx(8.0, abs=1e-3)
