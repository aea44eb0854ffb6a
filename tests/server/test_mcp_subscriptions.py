"""``resources/subscribe`` on ``/mcp`` with the ``mcp`` SDK's own client: the session's
GET stream brings ``notifications/resources/updated`` for a subscribed room transcript
when a message is posted there (over REST, by someone else), and none after
``resources/unsubscribe``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from roomcast.testing import ServerProcess


@pytest.fixture(scope="module")
def server(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    with ServerProcess(env={**test_env, "ROOMCAST_ALLOW_ANONYMOUS": "true"}) as proc:
        yield proc


@asynccontextmanager
async def listening_session(url: str, updates: asyncio.Queue[str]) -> AsyncIterator[ClientSession]:
    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            await updates.put(str(message.params.uri))

    async with (
        httpx2.AsyncClient(headers={"X-Roomcast-Client-Id": "watcher"}, timeout=60) as http,
        streamable_http_client(url + "/mcp", http_client=http) as (read, write),
        ClientSession(read, write, message_handler=on_message) as session,
    ):
        result = await session.initialize()
        caps = result.capabilities.resources
        assert caps is not None and caps.subscribe
        yield session


async def post(server: ServerProcess, room: str, text: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server.url}/v1/channels/{room}/messages",
            json={"data": text},
            headers={"X-Roomcast-Client-Id": "poster"},
        )
    assert response.status_code in (200, 201), response.text


# The SDK warns that a later protocol version replaces resources/subscribe; the session
# speaks 2025-11-25, where it is the way to subscribe.
@pytest.mark.filterwarnings("ignore:resources/(un)?subscribe is removed")
async def test_a_subscribed_transcript_notifies_until_unsubscribed(
    server: ServerProcess,
) -> None:
    quiet, busy = (f"room:{uuid.uuid4().hex[:10]}" for _ in range(2))
    updates: asyncio.Queue[str] = asyncio.Queue()
    async with listening_session(server.url, updates) as session:
        await session.subscribe_resource(f"roomcast://room/{quiet}")
        await session.subscribe_resource(f"roomcast://room/{busy}")
        await post(server, quiet, "hello")
        assert await asyncio.wait_for(updates.get(), 5) == f"roomcast://room/{quiet}"
        await session.unsubscribe_resource(f"roomcast://room/{quiet}")
        await post(server, quiet, "nobody listens")
        await post(server, busy, "still watched")
        # the quiet room's second message brings nothing: the next update is the busy one's
        assert await asyncio.wait_for(updates.get(), 5) == f"roomcast://room/{busy}"
        assert updates.empty()
