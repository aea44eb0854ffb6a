"""``/mcp`` in ``roomcast serve``'s lifetime: the SDK's session manager runs from start to
stop, and SIGTERM stops a server in the middle of MCP calls quickly and cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from roomcast.testing import ServerProcess, WireClient


@asynccontextmanager
async def mcp_session(url: str, client_id: str) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(headers={"X-Roomcast-Client-Id": client_id}, timeout=60) as http,
        streamable_http_client(url + "/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def test_sigterm_during_a_wait_stops_cleanly(test_env: dict[str, str]) -> None:
    name = f"room:{uuid.uuid4().hex[:10]}"
    with ServerProcess(env={**test_env, "ROOMCAST_ALLOW_ANONYMOUS": "true"}) as server:
        answers: list[dict[str, Any] | None] = []

        async def wait_in_the_room() -> None:
            async with mcp_session(server.url, "waiter") as session:
                await session.list_tools()  # what the client checks a result against
                args = {"room": name, "since_serial": 0, "timeout_s": 25}
                answers.append(
                    (await session.call_tool("wait_for_messages", args)).structured_content
                )

        async with await WireClient.connect(server.ws_url, client_id="host") as ws:
            await ws.request("attach", channel=name)
            waiter = asyncio.create_task(wait_in_the_room())
            # the wait is under way once its session shows in the room
            enter = await ws.next(lambda m: m.get("action") == "presence")
            assert enter["client_id"] == "waiter"
            start = time.monotonic()
            code = await asyncio.to_thread(server.stop, timeout=10)
            took = time.monotonic() - start
        with contextlib.suppress(Exception):  # the client's DELETE finds no server
            await waiter
        log = server.output()
    # the wait was answered (as a wait with nothing new), not cut off
    assert answers and answers[0] is not None and answers[0]["timed_out"], answers
    assert code == 0, log
    assert took < 10, log
    assert "Traceback" not in log and "ERROR" not in log, log
