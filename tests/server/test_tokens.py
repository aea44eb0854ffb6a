"""API keys and tokens against a real server (docs/protocol.md §6, §7): POST /v1/tokens, tokens
and keys on the WebSocket, REST and SSE, expiry and renewal."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

from roomcast.protocol.capabilities import ALL
from roomcast.protocol.keys import ApiKey, issue_token
from roomcast.testing import ServerProcess, WireClient

SECRET = "k" * 32
OPS = f"ops:{SECRET}"
# A key limited to subscribing on room:*.
READER = 'reader:r3ad3r:{"room:*": ["subscribe", "history"]}'


def room() -> str:
    return f"room:{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def keyed(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    """A loopback server with keys (so anonymous access is off)."""
    with ServerProcess(env={**test_env, "ROOMCAST_KEYS": f"{OPS}\n{READER}"}) as proc:
        yield proc


@pytest.fixture
async def http(keyed: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=keyed.url) as client:
        yield client


async def issue(http: httpx.AsyncClient, key: str = OPS, **body: Any) -> str:
    response = await http.post("/v1/tokens", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def refused(url: str) -> tuple[dict[str, Any], int | None]:
    """The error and the close code of a WebSocket refused at connect."""
    async with ws_connect(url) as ws:
        error = json.loads(await ws.recv())
        await ws.wait_closed()
        return error, ws.close_code


async def test_post_tokens_issues_a_token(http: httpx.AsyncClient) -> None:
    import time

    response = await http.post(
        "/v1/tokens",
        json={"client_id": "alice", "capability": {"room:*": ["subscribe"]}, "ttl_s": 60},
        headers={"Authorization": f"Bearer {OPS}"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"token", "expires_at"}
    assert abs(body["expires_at"] - (time.time() + 60) * 1000) < 5000


async def test_post_tokens_refusals(http: httpx.AsyncClient) -> None:
    cases: list[tuple[dict[str, str], dict[str, Any], int]] = [
        ({}, {"client_id": "a"}, 40100),
        ({"Authorization": "Bearer ops:wrong"}, {"client_id": "a"}, 40100),
        ({"Authorization": "Bearer nokey:x"}, {"client_id": "a"}, 40100),
        ({"Authorization": "Basic b3BzOng="}, {"client_id": "a"}, 40100),
        (
            {"Authorization": "Bearer reader:r3ad3r"},
            {"client_id": "a", "capability": {"room:*": ["publish"]}},
            40300,
        ),
        ({"Authorization": f"Bearer {OPS}"}, {"client_id": "a", "ttl_s": 86401}, 40000),
        ({"Authorization": f"Bearer {OPS}"}, {"client_id": "a b"}, 40000),
        (
            {"Authorization": f"Bearer {OPS}"},
            {"client_id": "a", "capability": {"x": ["fly"]}},
            40000,
        ),
    ]
    for headers, body, code in cases:
        response = await http.post("/v1/tokens", json=body, headers=headers)
        assert response.json()["error"]["code"] == code, (headers, body, response.text)
        assert response.status_code == code // 100
        assert SECRET not in response.text


async def test_openapi_documents_post_tokens(http: httpx.AsyncClient) -> None:
    document = (await http.get("/openapi.json")).json()
    operation = document["paths"]["/v1/tokens"]["post"]
    assert "TokenResult" in json.dumps(operation["responses"]["200"])
    assert "TokenRequest" in json.dumps(operation["requestBody"])


async def test_without_credentials_a_keyed_server_is_closed(
    keyed: ServerProcess, http: httpx.AsyncClient
) -> None:
    error, close = await refused(keyed.ws_url + "?client_id=alice")
    assert error["code"] == 40100 and close == 4001
    response = await http.get(f"/v1/channels/{room()}/messages")
    assert response.status_code == 401 and response.json()["error"]["code"] == 40100


async def test_bad_credentials_are_40100_then_4001(keyed: ServerProcess) -> None:
    for query in ("?token=abc", "?key=ops:wrong", "?key=nokey:x"):
        error, close = await refused(keyed.ws_url + query)
        assert error["code"] == 40100 and close == 4001, query


async def test_websocket_with_a_token_and_with_a_key(
    keyed: ServerProcess, http: httpx.AsyncClient
) -> None:
    channel = room()
    token = await issue(http, client_id="alice")
    alice = await WireClient.connect(keyed.ws_url, token=token)
    assert alice.connected["client_id"] == "alice"
    bot = await WireClient.connect(keyed.ws_url, key=OPS)
    assert bot.connected["client_id"] == "key:ops"
    named = await WireClient.connect(keyed.ws_url, key=OPS, client_id="helper")
    assert named.connected["client_id"] == "helper"
    await bot.request("attach", channel=channel)
    assert (await alice.request("publish", channel=channel, data="hi"))["action"] == "ok"
    [event] = await bot.events(channel, 1)
    assert event["client_id"] == "alice"
    for c in (alice, bot, named):
        await c.close()


async def test_a_subscribe_only_capability_cannot_publish(
    keyed: ServerProcess, http: httpx.AsyncClient
) -> None:
    channel = room()
    token = await issue(http, client_id="reader-1", capability={"room:*": ["subscribe"]})
    reader = await WireClient.connect(keyed.ws_url, token=token)
    assert (await reader.request("attach", channel=channel))["action"] == "attached"
    refusal = await reader.request("publish", channel=channel, data="no")
    assert refusal["action"] == "error" and refusal["code"] == 40300
    other = await reader.request("attach", channel="lobby")
    assert other["code"] == 40300
    # the reader key itself: subscribe-only too
    keyed_reader = await WireClient.connect(keyed.ws_url, key="reader:r3ad3r")
    assert (await keyed_reader.request("publish", channel=channel, data=1))["code"] == 40300
    await reader.close()
    await keyed_reader.close()


async def test_an_expired_token_gets_an_error_then_4001(
    keyed: ServerProcess, http: httpx.AsyncClient
) -> None:
    token = await issue(http, client_id="brief", ttl_s=2)
    client = await WireClient.connect(keyed.ws_url, token=token)
    error = await client.next(lambda m: m["action"] == "error", timeout=6)
    assert error["code"] == 40100 and "expired" in error["message"]
    await asyncio.wait_for(client.closed.wait(), 5)
    assert client.close_code == 4001


async def test_auth_renews_the_token_past_its_first_expiry(
    keyed: ServerProcess, http: httpx.AsyncClient
) -> None:
    channel = room()
    first = await issue(http, client_id="renewer", ttl_s=2)
    client = await WireClient.connect(keyed.ws_url, token=first)
    later = await issue(http, client_id="renewer", ttl_s=60)
    assert (await client.request("auth", token=later))["action"] == "ok"
    await asyncio.sleep(3.5)  # past the first token's exp + leeway
    assert not client.closed.is_set()
    assert (await client.request("publish", channel=channel, data=1))["action"] == "ok"
    await client.close()


async def test_auth_with_a_foreign_or_bad_token_is_refused_and_keeps_the_current_one(
    keyed: ServerProcess, http: httpx.AsyncClient
) -> None:
    channel = room()
    mine = await issue(http, client_id="carol", capability={"room:*": ["publish"]})
    client = await WireClient.connect(keyed.ws_url, token=mine)
    foreign = await issue(http, client_id="mallory")
    for token in (foreign, "abc"):
        reply = await client.request("auth", token=token)
        assert reply["action"] == "error" and reply["code"] == 40100
    # still carol, with carol's capability
    assert (await client.request("publish", channel=channel, data=1))["action"] == "ok"
    assert (await client.request("attach", channel=channel))["code"] == 40300
    # a renewal may narrow or widen within the key
    wider = await issue(http, client_id="carol", capability={"room:*": ["*"]})
    assert (await client.request("auth", token=wider))["action"] == "ok"
    assert (await client.request("attach", channel=channel))["action"] == "attached"
    await client.close()


async def test_rest_and_sse_take_bearer_tokens_and_keys(
    keyed: ServerProcess, http: httpx.AsyncClient
) -> None:
    channel = room()
    token = await issue(http, client_id="dave")
    as_dave = {"Authorization": f"Bearer {token}"}
    published = await http.post(
        f"/v1/channels/{channel}/messages", json={"data": 1}, headers=as_dave
    )
    assert published.status_code == 200, published.text
    as_key = {"Authorization": f"Bearer {OPS}"}
    await http.post(f"/v1/channels/{channel}/messages", json={"data": 2}, headers=as_key)
    history = await http.get(f"/v1/channels/{channel}/messages", headers=as_dave)
    assert [(m["client_id"], m["data"]) for m in history.json()["items"]] == [
        ("dave", 1),
        ("key:ops", 2),
    ]
    bad = await http.get(f"/v1/channels/{channel}/messages", headers={"Authorization": "Bearer x"})
    assert bad.status_code == 401
    in_url = await http.get(f"/v1/channels/{channel}/messages", params={"key": OPS})
    assert in_url.status_code == 401
    # SSE with ?token=
    async with http.stream(
        "GET", f"/v1/channels/{channel}/events", params={"token": token, "from_serial": 0}
    ) as stream:
        assert stream.status_code == 200
        async for line in stream.aiter_lines():
            if line.startswith("data:") and '"create"' in line:
                assert '"dave"' in line
                break


async def test_the_start_up_print_shows_key_names_not_secrets(keyed: ServerProcess) -> None:
    output = keyed.output()
    assert "ops, reader" in output
    assert SECRET not in output and "r3ad3r" not in output


async def test_credentials_in_urls_never_reach_the_log(test_env: dict[str, str]) -> None:
    env = {**test_env, "ROOMCAST_KEYS": OPS, "ROOMCAST_LOG_LEVEL": "info"}
    with ServerProcess(env=env) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            token = await issue(http, client_id="erin")
            await http.get("/v1/channels", params={"token": token})
            await http.get("/v1/channels", params={"key": OPS})
        client = await WireClient.connect(server.ws_url, key=OPS)
        await client.close()
        client = await WireClient.connect(server.ws_url, token=token)
        await client.close()
        await asyncio.sleep(0.2)
        output = server.output()
    assert "/v1/ws?key=***" in output  # it was logged, masked
    assert SECRET not in output and token not in output


async def logged(server: ServerProcess, needle: str, count: int) -> str:
    """The server's log once ``needle`` is in it ``count`` times (access lines are written
    after the answer)."""
    deadline = asyncio.get_running_loop().time() + 10
    while (output := server.output()).count(needle) < count:
        assert asyncio.get_running_loop().time() < deadline, output
        await asyncio.sleep(0.02)
    return output


async def test_credentials_are_masked_in_the_log_however_their_names_are_spelled(
    test_env: dict[str, str],
) -> None:
    env = {**test_env, "ROOMCAST_KEYS": OPS, "ROOMCAST_LOG_LEVEL": "info"}
    with ServerProcess(env=env) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            token = await issue(http, client_id="erin")
            for query in (f"%74oken={token}", f"%74%6Fken={token}", f"TOKEN={token}"):
                await http.get(f"/v1/channels?marker=1&{query}")
            await http.get(f"/v1/channels?marker=1&%6Bey={OPS}")
            await http.get(f"/v1/channels?marker=1&k%65y={OPS}&%2574oken={token}")
        # Decoded by the server and used: it is a key holder.
        client = await WireClient.connect(server.ws_url, **{"%6Bey": OPS, "marker": "1"})
        assert client.connected["client_id"] == "key:ops"
        await client.close()
        client = await WireClient.connect(server.ws_url, **{"%74oken": token, "marker": "1"})
        assert client.connected["client_id"] == "erin"
        await client.close()
        output = await logged(server, "marker=1", 7)
    assert SECRET not in output and token not in output
    assert "%6Bey=***" in output and "%74oken=***" in output


@pytest.fixture(scope="module")
def open_keyed(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    """Keys, and anonymous access on too."""
    env = {**test_env, "ROOMCAST_KEYS": f"{OPS}\n{READER}", "ROOMCAST_ALLOW_ANONYMOUS": "1"}
    with ServerProcess(env=env) as proc:
        yield proc


async def first_answer(url: str) -> tuple[dict[str, Any], int | None]:
    """The first message of a WebSocket, and its close code if it was refused."""
    async with ws_connect(url) as ws:
        first = json.loads(await ws.recv())
        if first["action"] != "error":
            return first, None
        await ws.wait_closed()
        return first, ws.close_code


async def test_key_identities_are_reserved_for_their_keys(open_keyed: ServerProcess) -> None:
    channel = room()
    owner = await WireClient.connect(open_keyed.ws_url, key=OPS)
    assert owner.connected["client_id"] == "key:ops"
    serial = (await owner.request("publish", channel=channel, data="mine"))["serial"]
    reader_key = "reader:r3ad3r"
    for query in (
        "client_id=key:ops",
        "client_id=KEY:ops",
        "client_id=key:someone",
        f"key={reader_key}&client_id=key:ops",  # another key's holder
    ):
        answer, code = await first_answer(f"{open_keyed.ws_url}?{query}")
        assert (answer.get("code"), code) == (40100, 4001), (query, answer)
    reader = await WireClient.connect(open_keyed.ws_url, key=reader_key)
    assert reader.connected["client_id"] == "key:reader"  # its own is its own
    await reader.close()
    async with httpx.AsyncClient(base_url=open_keyed.url) as http:
        # A token never carries a key's identity: not issued, and refused if made offline.
        asked = await http.post(
            "/v1/tokens", json={"client_id": "key:ops"}, headers={"Authorization": f"Bearer {OPS}"}
        )
        assert asked.status_code == 403, asked.text
        forged = issue_token(ApiKey("ops", SECRET, ALL), "key:ops").token
        answer, code = await first_answer(f"{open_keyed.ws_url}?token={forged}")
        assert (answer.get("code"), code) == (40100, 4001)
        # Over HTTP too: an anonymous X-Roomcast-Client-Id of key:ops edits nothing.
        edit = await http.patch(
            f"/v1/channels/{channel}/messages/{serial}",
            json={"data": "defaced"},
            headers={"X-Roomcast-Client-Id": "key:ops"},
        )
        assert edit.status_code == 401, edit.text
    history = await owner.request("history", channel=channel)
    assert [m["data"] for m in history["messages"]] == ["mine"]
    await owner.close()
