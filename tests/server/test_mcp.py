"""``/mcp`` against a real ``roomcast serve``, driven by the ``mcp`` SDK's own client
(streamable HTTP + ClientSession): tools, refusals, waiting, streaming, presence, and a
session whose requests go to two nodes on one Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from roomcast.testing import ServerProcess, WireClient

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
SECRET = "m" * 32
OPS = f"ops:{SECRET}"
PAGE = "http://chat.example"  # an allowed origin


def room() -> str:
    return f"room:{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def server(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    env = {
        **test_env,
        "ROOMCAST_KEYS": OPS,
        "ROOMCAST_ALLOW_ANONYMOUS": "true",
        "ROOMCAST_ALLOWED_ORIGINS": PAGE,
    }
    with ServerProcess(env=env) as proc:
        yield proc


@asynccontextmanager
async def mcp_session(url: str, headers: dict[str, str]) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        streamable_http_client(url + "/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def call(session: ClientSession, tool: str, **args: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, args)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def refused(session: ClientSession, tool: str, **args: Any) -> str:
    result = await session.call_tool(tool, args)
    assert result.is_error, result
    text = result.content[0].text  # type: ignore[union-attr]
    assert isinstance(text, str)
    return text


def history(server: ServerProcess, channel: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{server.url}/v1/channels/{channel}/messages",
        headers={"Authorization": f"Bearer {OPS}"},
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_tools_post_read_and_refuse(server: ServerProcess) -> None:
    name = room()
    async with mcp_session(server.url, {"X-Roomcast-Client-Id": "ada"}) as session:
        tools = {t.name for t in (await session.list_tools()).tools}
        assert {"post_message", "read_messages", "wait_for_messages", "stream_message"} <= tools
        first = await call(session, "post_message", room=name, text="hello")
        second = await call(
            session, "post_message", room=name, text="again", reply_to=first["msg_serial"]
        )
        page = await call(session, "read_messages", room=name)
        assert [(m["msg_serial"], m["author"], m["text"]) for m in page["messages"]] == [
            (first["msg_serial"], "ada", "hello"),
            (second["msg_serial"], "ada", "again"),
        ]
        assert page["messages"][1]["reply_to"] == first["msg_serial"]
        after = await call(session, "read_messages", room=name, since_serial=first["msg_serial"])
        assert [m["text"] for m in after["messages"]] == ["again"]
        assert "40000" in await refused(session, "post_message", room="no room!", text="x")
        assert "40400" in await refused(session, "read_messages", room=name, since_serial=999)
        assert "reply to" in await refused(
            session, "post_message", room=name, text="x", reply_to=999
        )
        assert "no tool" in await refused(session, "nope")
    assert [m["data"] for m in history(server, name)] == ["hello", "again"]


async def test_a_narrow_token_is_refused_and_nothing_is_stored(server: ServerProcess) -> None:
    name = room()
    body = {"client_id": "reader", "capability": {"room:*": ["subscribe", "history"]}}
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server.url}/v1/tokens", json=body, headers={"Authorization": f"Bearer {OPS}"}
        )
    token = response.json()["token"]
    async with mcp_session(server.url, {"Authorization": f"Bearer {token}"}) as session:
        assert "40300" in await refused(session, "post_message", room=name, text="no")
        assert "40300" in await refused(session, "set_shared", room=name, key="k", value=1)
        assert "40300" in await refused(session, "stream_message", room=name, action="start")
        assert (await call(session, "read_messages", room=name))["messages"] == []
    assert history(server, name) == []


async def test_bad_credentials_are_an_http_error_not_a_crash(server: ServerProcess) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server.url}/mcp",
            headers={"Authorization": "Bearer nobody:wrong", "Accept": "application/json"},
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        )
    assert response.status_code == 401
    assert response.json()["error"]["message"].startswith("40100")


async def test_wait_returns_soon_after_a_message_or_at_its_timeout(server: ServerProcess) -> None:
    name = room()
    async with mcp_session(server.url, {"X-Roomcast-Client-Id": "listener"}) as session:
        start = time.monotonic()
        quiet = await call(session, "wait_for_messages", room=name, since_serial=0, timeout_s=1)
        assert quiet["timed_out"] and quiet["messages"] == []
        assert 0.9 <= time.monotonic() - start < 5

        async def post_later() -> float:
            await asyncio.sleep(0.5)  # the wait must be under way: the point of the test
            async with httpx.AsyncClient() as http:
                await http.post(
                    f"{server.url}/v1/channels/{name}/messages",
                    json={"data": "wake up"},
                    headers={"X-Roomcast-Client-Id": "poster"},
                )
            return time.monotonic()

        poster = asyncio.create_task(post_later())
        woke = await call(session, "wait_for_messages", room=name, since_serial=0, timeout_s=20)
        posted = await poster
        assert not woke["timed_out"]
        assert [m["text"] for m in woke["messages"]] == ["wake up"]
        assert time.monotonic() - posted < 1.0
        with pytest.raises(AssertionError):  # over 25 s is refused
            await call(session, "wait_for_messages", room=name, since_serial=0, timeout_s=60)


async def test_a_streamed_message_grows_for_a_websocket_subscriber(server: ServerProcess) -> None:
    name = room()
    async with (
        await WireClient.connect(server.ws_url, client_id="watcher") as ws,
        mcp_session(server.url, {"X-Roomcast-Client-Id": "writer"}) as session,
    ):
        await ws.request("attach", channel=name)
        started = await call(session, "stream_message", room=name, action="start", text="Once")
        serial = started["msg_serial"]
        create = await ws.next(lambda m: m.get("type") == "create")
        assert create["data"] == "Once" and create["streaming"] is True
        await call(
            session, "stream_message", room=name, action="append", msg_serial=serial, text=" upon"
        )
        append = await ws.next(lambda m: m.get("type") == "append")
        assert append["data"] == " upon"
        await call(
            session, "stream_message", room=name, action="end", msg_serial=serial, text=" a time"
        )
        end = await ws.next(lambda m: m.get("type") == "update")
        assert end["status"] == "complete"
    assert history(server, name)[0]["data"] == "Once upon a time"


async def test_the_session_is_present_while_open(server: ServerProcess) -> None:
    name = room()
    async with await WireClient.connect(server.ws_url, client_id="host") as ws:
        await ws.request("attach", channel=name)
        async with mcp_session(server.url, {"X-Roomcast-Client-Id": "visitor"}) as session:
            await call(session, "post_message", room=name, text="hi all")
            enter = await ws.next(lambda m: m.get("action") == "presence")
            assert (enter["op"], enter["client_id"]) == ("enter", "visitor")
            here = await call(session, "who_is_here", room=name)
            assert [m["client_id"] for m in here["members"]] == ["visitor"]
        leave = await ws.next(lambda m: m.get("action") == "presence")
        assert (leave["op"], leave["client_id"]) == ("leave", "visitor")
    async with httpx.AsyncClient() as http:
        members = await http.get(f"{server.url}/v1/channels/{name}/presence")
    assert members.json()["items"] == []


async def test_resources_are_room_transcripts(server: ServerProcess) -> None:
    name = room()
    async with mcp_session(server.url, {"X-Roomcast-Client-Id": "reader2"}) as session:
        await call(session, "post_message", room=name, text="for the record")
        listed = {str(r.uri) for r in (await session.list_resources()).resources}
        assert f"roomcast://room/{name}" in listed
        read = await session.read_resource(f"roomcast://room/{name}")
        text = read.contents[0].text  # type: ignore[union-attr]
        assert [m["text"] for m in json.loads(text)["messages"]] == ["for the record"]


async def test_a_page_of_an_allowed_origin_may_speak_mcp(server: ServerProcess) -> None:
    preflight = {
        "Origin": PAGE,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": (
            "authorization, content-type, mcp-session-id, mcp-protocol-version"
        ),
    }
    async with httpx.AsyncClient(base_url=server.url) as http:
        allowed = await http.options("/mcp", headers=preflight)
        assert allowed.status_code == 200, allowed.text
        assert allowed.headers["access-control-allow-origin"] == PAGE
        granted = {
            h.strip().lower() for h in allowed.headers["access-control-allow-headers"].split(",")
        }
        assert {"mcp-session-id", "mcp-protocol-version", "authorization"} <= granted
        other = await http.options("/mcp", headers={**preflight, "Origin": "http://evil.example"})
        assert other.status_code == 400
        init = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "page", "version": "1"},
        }
        opened = await http.post(
            "/mcp", json=rpc("initialize", init), headers={**HEADERS, "Origin": PAGE}
        )
        assert opened.status_code == 200, opened.text
        assert opened.headers["access-control-allow-origin"] == PAGE
        exposed = opened.headers["access-control-expose-headers"].lower()
        assert "mcp-session-id" in exposed and opened.headers["mcp-session-id"]


def rpc(method: str, params: dict[str, Any], ident: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": ident, "method": method, "params": params}


HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}


INIT = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "test", "version": "1"},
}


@pytest.fixture
def two_nodes(
    test_env: dict[str, str], redis_store_url: str
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two nodes on one Redis, for a session whose requests reach either."""
    env = {**test_env, "ROOMCAST_ALLOW_ANONYMOUS": "true"}
    with (
        ServerProcess(store=redis_store_url, env=env) as a,
        ServerProcess(store=redis_store_url, env=env) as b,
    ):
        yield a, b


async def open_session(http: httpx.AsyncClient, node: ServerProcess) -> str:
    opened = await http.post(f"{node.url}/mcp", json=rpc("initialize", INIT))
    assert opened.status_code == 200, opened.text
    return str(opened.headers["mcp-session-id"])


async def post_message(
    http: httpx.AsyncClient, node: ServerProcess, sid: str, name: str, text: str
) -> None:
    params = {"name": "post_message", "arguments": {"room": name, "text": text}}
    posted = await http.post(
        f"{node.url}/mcp", json=rpc("tools/call", params), headers={"Mcp-Session-Id": sid}
    )
    assert posted.status_code == 200, posted.text
    assert not posted.json()["result"].get("isError"), posted.text


async def test_a_session_works_on_whichever_node_answers(
    two_nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_nodes
    name = room()
    async with httpx.AsyncClient(headers=HEADERS, timeout=30) as http:
        sid = await open_session(http, a)
        headers = {"Mcp-Session-Id": sid}
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await http.post(f"{b.url}/mcp", json=note, headers=headers)).is_success
        await post_message(http, b, sid, name, "from b")
        await post_message(http, a, sid, name, "from a")
        params = {"name": "read_messages", "arguments": {"room": name}}
        read = await http.post(f"{b.url}/mcp", json=rpc("tools/call", params), headers=headers)
        messages = read.json()["result"]["structuredContent"]["messages"]
        authors = {m["author"] for m in messages}
        assert [m["text"] for m in messages] == ["from b", "from a"]
        assert len(authors) == 1 and next(iter(authors)).startswith("anon-")
        here = await http.get(f"{a.url}/v1/channels/{name}/presence")
        assert [m["connection_id"] for m in here.json()["items"]] == [sid]
        assert (await http.delete(f"{b.url}/mcp", headers=headers)).status_code == 200
        gone = await http.post(f"{a.url}/mcp", json=rpc("tools/list", {}), headers=headers)
        assert gone.status_code == 404
        here = await http.get(f"{a.url}/v1/channels/{name}/presence")
        assert here.json()["items"] == []


async def test_a_session_ended_on_one_node_leaves_the_rooms_it_used_through_another(
    two_nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_nodes
    first, second = room(), room()
    async with httpx.AsyncClient(headers=HEADERS, timeout=30) as http:
        sid = await open_session(http, a)
        await post_message(http, a, sid, first, "hi")
        await post_message(http, b, sid, second, "hi")
        for name in (first, second):
            here = await http.get(f"{a.url}/v1/channels/{name}/presence")
            assert [m["connection_id"] for m in here.json()["items"]] == [sid]
        ended = await http.delete(f"{b.url}/mcp", headers={"Mcp-Session-Id": sid})
        assert ended.status_code == 200
        for name in (first, second):
            here = await http.get(f"{a.url}/v1/channels/{name}/presence")
            assert here.json()["items"] == [], name


@pytest.mark.filterwarnings("ignore:resources/(un)?subscribe is removed")
async def test_subscriptions_sent_at_once_to_two_nodes_all_hold(
    two_nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    """One session subscribes to 12 rooms at once, its requests spread over two nodes; the
    stream it then opens tells of a new message (its own) in every one of them."""
    a, b = two_nodes
    rooms = [room() for _ in range(12)]
    async with httpx.AsyncClient(headers=HEADERS, timeout=30) as http:
        sid = await open_session(http, a)
        headers = {"Mcp-Session-Id": sid}
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await http.post(f"{a.url}/mcp", json=note, headers=headers)).is_success
        answers = await asyncio.gather(
            *(
                http.post(
                    f"{(a, b)[i % 2].url}/mcp",
                    json=rpc("resources/subscribe", {"uri": f"roomcast://room/{name}"}, i),
                    headers=headers,
                )
                for i, name in enumerate(rooms)
            )
        )
        assert all(r.status_code == 200 and "result" in r.json() for r in answers)
        told: set[str] = set()
        async with http.stream("GET", f"{b.url}/mcp", headers=headers) as stream:
            assert stream.status_code == 200
            for name in rooms:
                await post_message(http, a, sid, name, "news")
            lines = stream.aiter_lines()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(20):
                    while told != set(rooms):
                        line = await anext(lines)
                        if line.startswith("data: "):
                            told.add(json.loads(line[6:])["params"]["uri"].split("/")[-1])
        assert set(rooms) - told == set(), "subscriptions lost"


@pytest.fixture
def redis_store_url(redis_store: str) -> str:
    """A redis:// store URL with a key prefix of this test's own (tests/conftest.py)."""
    return redis_store
