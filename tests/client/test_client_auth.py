"""Credentials in the SDK: tokens renewed on the open connection before they expire, API
keys, refused tokens, and a reconnect with a fresh token after an expiry (docs/protocol.md §6)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from polling import eventually
from roomcast.client import (
    AuthError,
    Backoff,
    Client,
    Event,
    Forbidden,
    StateChange,
    connect,
)
from roomcast.client.tokens import renew_delay, token_expiry
from roomcast.testing import ServerProcess

KEY = "ops:" + "s" * 32
FULL = {"*": ["*"]}
READ_ONLY = {"*": ["subscribe", "history", "presence"]}


@pytest.fixture(scope="module")
def keyed(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    """A server with one API key, so every client needs credentials."""
    with ServerProcess(env={**test_env, "ROOMCAST_KEYS": KEY}) as proc:
        yield proc


class TokenBackend:
    """What an app's backend does for its browser: asks the server for short tokens with the
    API key. ``capability`` and ``broken`` change what the next call returns."""

    def __init__(self, server: ServerProcess, client_id: str, ttl_s: int = 3) -> None:
        self.http = httpx.AsyncClient(base_url=server.url)
        self.client_id = client_id
        self.ttl_s = ttl_s
        self.capability: dict[str, list[str]] = FULL
        self.broken = False
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.broken:
            raise RuntimeError("the token backend is down")
        body = {"client_id": self.client_id, "ttl_s": self.ttl_s, "capability": self.capability}
        response = await self.http.post(
            "/v1/tokens", json=body, headers={"Authorization": f"Bearer {KEY}"}
        )
        response.raise_for_status()
        token: str = response.json()["token"]
        return token


@pytest.fixture
async def backend(keyed: ServerProcess) -> AsyncIterator[TokenBackend]:
    b = TokenBackend(keyed, f"user-{uuid.uuid4().hex[:6]}")
    yield b
    await b.http.aclose()


def record(client: Client) -> list[StateChange]:
    changes: list[StateChange] = []
    for event in ("connected", "resumed", "disconnected", "renewed", "renewal_failed", "failed"):
        client.on(event, changes.append)  # type: ignore[arg-type]
    return changes


def events_named(changes: list[StateChange], name: str) -> list[StateChange]:
    return [c for c in changes if c.event == name]


async def next_event(iterator: AsyncIterator[Event]) -> Event:
    return await asyncio.wait_for(anext(iterator), 10)


def test_renewal_starts_at_two_thirds_or_30s_before_but_not_before_half() -> None:
    assert renew_delay(3600) == pytest.approx(2400)  # 2/3 of an hour
    assert renew_delay(60) == pytest.approx(30)  # 30 s before
    assert renew_delay(3) == pytest.approx(1.5)  # a short token: half-way
    assert renew_delay(-1) == 0.0  # already expired: now
    assert token_expiry("not-a-jwt") is None


async def test_one_connection_outlives_several_short_tokens(
    keyed: ServerProcess, backend: TokenBackend, channel_name: str
) -> None:
    """3 s tokens for ~10 s: renewed with `auth`, never a reconnect, and the connection can
    still publish and receive at the end."""
    async with connect(keyed.url, auth_callback=backend) as client:
        changes = record(client)
        first_id = client.connection_id
        first_exp = token_expiry(client.token or "")
        assert first_exp is not None and first_exp - time.time() <= 3
        channel = client.channels.get(channel_name)
        subscription = await channel.subscribe()
        events = aiter(subscription)
        await asyncio.sleep(10)  # past three expiries of the first token

        assert len(events_named(changes, "renewed")) >= 4
        assert [c.event for c in changes if c.event != "renewed"] == []  # no reconnect
        assert client.connection_id == first_id
        assert client.state == "connected"
        assert (token_expiry(client.token or "") or 0) > first_exp + 6
        serial = await channel.publish("still here")
        event = await next_event(events)
        assert (event.serial, event.data, event.client_id) == (
            serial,
            "still here",
            backend.client_id,
        )


async def test_a_narrower_renewed_token_takes_effect_without_reconnecting(
    keyed: ServerProcess, backend: TokenBackend, channel_name: str
) -> None:
    async with connect(keyed.url, auth_callback=backend) as client:
        changes = record(client)
        channel = client.channels.get(channel_name)
        await channel.publish("allowed")
        backend.capability = READ_ONLY
        await eventually(lambda: len(events_named(changes, "renewed")) >= 1)
        with pytest.raises(Forbidden):
            await channel.publish("refused now")
        assert [c.event for c in changes] == ["renewed"]
        assert client.state == "connected"
        page = await anext(aiter(channel.history()))
        assert [m.data for m in page.messages] == ["allowed"]


async def test_a_refused_renewal_is_reported_and_an_expiry_reconnects_with_a_fresh_token(
    keyed: ServerProcess, backend: TokenBackend, channel_name: str
) -> None:
    """The callback fails until the token runs out: the server closes 4001, and the client
    reconnects (resuming its connection) with the callback's next token."""
    backoff = Backoff(initial=0.05, maximum=0.5)
    async with connect(keyed.url, auth_callback=backend, backoff=backoff) as client:
        changes = record(client)
        first_id = client.connection_id
        backend.broken = True
        await eventually(lambda: bool(events_named(changes, "disconnected")), within=10)
        failed = events_named(changes, "renewal_failed")
        assert failed and isinstance(failed[0].error, RuntimeError)
        assert "4001" in (events_named(changes, "disconnected")[0].reason or "")
        backend.broken = False
        await eventually(lambda: client.state == "connected", within=10)
        assert events_named(changes, "resumed")
        assert client.connection_id == first_id
        assert await client.channels.get(channel_name).publish("back") == 1


async def test_a_token_for_another_client_is_refused_as_a_renewal(
    keyed: ServerProcess, backend: TokenBackend
) -> None:
    async with connect(keyed.url, auth_callback=backend) as client:
        changes = record(client)
        backend.client_id = "someone-else"
        await eventually(lambda: bool(events_named(changes, "renewal_failed")), within=5)
        error = events_named(changes, "renewal_failed")[0].error
        assert isinstance(error, AuthError)
        assert client.state == "connected"  # the current token stays in place
        assert client.client_id != "someone-else"


async def test_without_a_callback_an_expired_token_fails_with_auth_error(
    keyed: ServerProcess, backend: TokenBackend
) -> None:
    client = await connect(keyed.url, token=await backend())
    failed: list[StateChange] = []
    client.on("failed", failed.append)
    try:
        await eventually(lambda: bool(failed), within=10)
        assert isinstance(failed[0].error, AuthError)
        with pytest.raises(AuthError):
            await client.ping()
    finally:
        await client.close()


async def test_a_key_connects_with_the_client_id_it_names(
    keyed: ServerProcess, channel_name: str
) -> None:
    async with connect(keyed.url, key=KEY, client_id="worker-1") as client:
        assert client.client_id == "worker-1"
        assert await client.channels.get(channel_name).publish("from a key") == 1
    async with connect(keyed.url, key=KEY) as client:
        assert client.client_id == "key:ops"


@pytest.mark.parametrize(
    "credentials",
    [{"token": "not.a.token"}, {"key": "ops:wrong"}, {}],
    ids=["bad-token", "bad-key", "none"],
)
async def test_bad_credentials_raise_auth_error(
    keyed: ServerProcess, credentials: dict[str, Any]
) -> None:
    with pytest.raises(AuthError):
        await connect(keyed.url, **credentials)


async def test_a_refused_token_falls_back_to_the_callback(
    keyed: ServerProcess, backend: TokenBackend
) -> None:
    async with connect(keyed.url, token="not.a.token", auth_callback=backend) as client:
        assert client.client_id == backend.client_id
        assert backend.calls == 1


async def test_a_sync_callback_works_and_a_callback_error_fails_connect(
    keyed: ServerProcess, backend: TokenBackend
) -> None:
    token = await backend()
    async with connect(keyed.url, auth_callback=lambda: token) as client:
        assert client.client_id == backend.client_id

    def refuse() -> str:
        raise AuthError("logged out")

    with pytest.raises(AuthError, match="logged out"):
        await connect(keyed.url, auth_callback=refuse)
    with pytest.raises(ValueError, match="not both"):
        connect(keyed.url, key=KEY, auth_callback=refuse)
