"""Connecting: URLs, credentials, state events, closing, and the wire formats."""

from __future__ import annotations

import asyncio

import pytest
from tcp_proxy import TcpProxy

from polling import eventually
from roomcast.client import (
    AuthError,
    Backoff,
    BadRequest,
    ClientClosed,
    StateChange,
    Unauthorized,
    connect,
)
from roomcast.client.urls import http_base, websocket_url
from roomcast.testing import ServerProcess, free_port


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/v1/ws"),
        ("http://127.0.0.1:8000/", "ws://127.0.0.1:8000/v1/ws"),
        ("https://chat.example.com/rc", "wss://chat.example.com/rc/v1/ws"),
        ("ws://127.0.0.1:8000", "ws://127.0.0.1:8000/v1/ws"),
        ("ws://127.0.0.1:8000/v1/ws", "ws://127.0.0.1:8000/v1/ws"),
        ("wss://h/custom/path", "wss://h/custom/path"),
    ],
)
def test_websocket_url_from_what_a_user_types(url: str, expected: str) -> None:
    assert websocket_url(url) == expected


def test_websocket_url_adds_query_parameters_and_http_base_goes_back() -> None:
    url = websocket_url("http://h:1", {"client_id": "al ice", "token": None, "resume": "r-1"})
    assert url == "ws://h:1/v1/ws?client_id=al+ice&resume=r-1"
    assert http_base("ws://h:1/v1/ws?x=1") == "http://h:1"
    assert http_base("http://h:1/") == "http://h:1"
    with pytest.raises(ValueError, match="not a server URL"):
        websocket_url("127.0.0.1:8000")


def test_backoff_is_exponential_with_full_jitter_and_resets() -> None:
    top = Backoff(initial=0.1, maximum=10.0, rng=lambda: 0.999999)
    caps = [round(top.next_delay(), 3) for _ in range(10)]
    assert caps == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0]
    assert Backoff(rng=lambda: 0.0).next_delay() == 0.0  # full jitter reaches down to 0
    top.reset()
    assert round(top.next_delay(), 3) == 0.1
    for _ in range(10_000):  # a long outage never overflows
        top.next_delay()
    assert top.cap() == 10.0
    with pytest.raises(ValueError):
        Backoff(initial=0)


async def test_credentials_are_refused_with_a_clear_auth_error(server: ServerProcess) -> None:
    with pytest.raises(AuthError, match="token") as refused:
        await connect(server.url, token="not-a-token")
    assert isinstance(refused.value, Unauthorized) and refused.value.code == 40100
    with pytest.raises(AuthError):
        await connect(server.url, key="name:secret")


async def test_an_unreachable_server_raises_at_once() -> None:
    with pytest.raises(OSError):
        await connect(f"http://127.0.0.1:{free_port()}")


async def test_state_events_on_cut_resume_and_close(
    server: ServerProcess, proxy: TcpProxy, backoff: Backoff
) -> None:
    changes: list[StateChange] = []
    async_changes: list[str] = []

    async def on_resumed(change: StateChange) -> None:
        async_changes.append(change.event)

    client = await connect(proxy.url, client_id="alice", backoff=backoff)
    assert client.is_connected and client.connection_id is not None
    for event in ("connected", "disconnected", "resumed", "closed"):
        client.on(event, changes.append)
    remove = client.on("resumed", on_resumed)
    first_id = client.connection_id

    proxy.cut()
    await eventually(lambda: client.state == "connected" and bool(async_changes))
    assert [c.event for c in changes] == ["disconnected", "resumed"]
    assert changes[0].state == "disconnected" and changes[1].state == "connected"
    assert changes[1].connection_id == first_id == client.connection_id
    assert async_changes == ["resumed"]
    assert await client.ping() < 1.0

    remove()
    proxy.cut()
    await eventually(lambda: len(changes) == 4)
    assert async_changes == ["resumed"]  # removed

    await client.close()
    assert client.state == "closed" and changes[-1].event == "closed"
    with pytest.raises(ClientClosed):
        await client.channels.get("room:x").publish("late")


async def test_subscriptions_end_when_the_client_closes(
    server: ServerProcess, channel_name: str
) -> None:
    client = await connect(server.url, client_id="alice")
    subscription = await client.channels.get(channel_name).subscribe()
    waiting = asyncio.create_task(anext(subscription))
    await asyncio.sleep(0.05)
    await client.close()
    with pytest.raises(StopAsyncIteration):
        await waiting


async def test_requests_wait_through_a_reconnect(
    server: ServerProcess, proxy: TcpProxy, channel_name: str, backoff: Backoff
) -> None:
    async with connect(proxy.url, client_id="alice", backoff=backoff) as client:
        proxy.cut()
        await asyncio.sleep(0)  # the client has not noticed yet, or is reconnecting
        channel = client.channels.get(channel_name)
        assert await channel.publish("through") == 1
        [page] = [p async for p in channel.history()]
        assert [m.data for m in page.messages] == ["through"]


async def test_msgpack_format(server: ServerProcess, channel_name: str) -> None:
    async with connect(server.url, client_id="alice", format="msgpack") as client:
        channel = client.channels.get(channel_name)
        subscription = await channel.subscribe()
        assert await channel.publish({"bytes?": "no, msgpack"}) == 1
        event = await anext(subscription)
        assert event.data == {"bytes?": "no, msgpack"}


async def test_a_bad_client_id_or_a_wrong_url_is_refused_at_connect(server: ServerProcess) -> None:
    with pytest.raises(BadRequest, match="client_id"):
        await connect(server.url, client_id="no spaces")
    with pytest.raises(ConnectionError, match="no roomcast WebSocket"):
        await connect(f"ws://127.0.0.1:{server.port}/not/here")


async def test_data_that_is_not_json_raises_before_anything_is_sent(
    server: ServerProcess, channel_name: str
) -> None:
    async with connect(server.url) as client:
        channel = client.channels.get(channel_name)
        with pytest.raises(TypeError):
            await channel.publish({"when": object()})
        assert await channel.publish([1, 2]) == 1
