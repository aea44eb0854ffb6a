"""docs/protocol.md §7 REST routes, against a real server process, with httpx."""

from __future__ import annotations

import json
import logging
import re
import shlex
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from roomcast.testing import ServerProcess, WireClient

ROOT = Path(__file__).resolve().parents[2]


def room() -> str:
    return f"room:{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


def as_alice(**headers: str) -> dict[str, str]:
    return {"X-Roomcast-Client-Id": "alice", **headers}


async def messages(http: httpx.AsyncClient, channel: str, **params: Any) -> list[dict[str, Any]]:
    response = await http.get(f"/v1/channels/{channel}/messages", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_rest_publish_reaches_a_websocket_subscriber(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    channel = room()
    bob = await WireClient.connect(server.ws_url, client_id="bob")
    await bob.request("attach", channel=channel)
    response = await http.post(
        f"/v1/channels/{channel}/messages",
        json={"data": {"text": "hi from curl"}, "name": "chat", "extras": {"lang": "en"}},
        headers=as_alice(),
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"msg_serial": 1}
    [event] = await bob.events(channel, 1)
    assert event["serial"] == 1 and event["type"] == "create"
    assert event["client_id"] == "alice" and event["name"] == "chat"
    assert event["data"] == {"text": "hi from curl"} and event["extras"] == {"lang": "en"}
    await bob.close()


async def test_history_pages_through_2500_messages_both_ways(http: httpx.AsyncClient) -> None:
    channel = room()
    for start in range(0, 2500, 1000):
        batch = [{"data": k} for k in range(start, min(start + 1000, 2500))]
        response = await http.post(f"/v1/channels/{channel}/messages", json=batch)
        assert response.json()["msg_serials"] == list(range(start + 1, start + len(batch) + 1))

    backward: list[int] = []
    params: dict[str, Any] = {"limit": 300}
    while True:
        page = (await http.get(f"/v1/channels/{channel}/messages", params=params)).json()
        serials = [m["msg_serial"] for m in page["items"]]
        assert serials == sorted(serials)  # each page is oldest first
        backward = serials + backward
        if not page["has_more"]:
            break
        params = {"limit": 300, "before": serials[0]}
    assert backward == list(range(1, 2501))

    forward: list[int] = []
    params = {"after": 0, "limit": 1000}
    while True:
        page = (await http.get(f"/v1/channels/{channel}/messages", params=params)).json()
        forward += [m["msg_serial"] for m in page["items"]]
        if not page["has_more"]:
            break
        params = {"after": forward[-1], "limit": 1000}
    assert forward == list(range(1, 2501))
    newest = await messages(http, channel)  # default: the newest 100
    assert [m["data"] for m in newest] == list(range(2400, 2500))


@pytest.mark.parametrize(
    ("bad_item", "code", "words"),
    [
        ({"data": 2, "name": 5}, 40000, "$[1].name"),
        ({"name": "no data"}, 40000, "data"),
        ({"data": {"n": 1}, "streaming": True}, 40000, "streaming"),
        ("not an object", 40000, "item 1"),
        ({"data": "x" * 70_000}, 41300, "message 1"),
    ],
)
async def test_batch_publish_is_all_or_nothing(
    http: httpx.AsyncClient, bad_item: Any, code: int, words: str
) -> None:
    channel = room()
    batch = [{"data": 1}, bad_item, {"data": 3}]
    response = await http.post(f"/v1/channels/{channel}/messages", json=batch)
    assert response.status_code == code // 100
    error = response.json()["error"]
    assert error["code"] == code and words in error["message"], error
    assert await messages(http, channel) == []
    listed = (await http.get("/v1/channels", params={"prefix": channel})).json()["items"]
    assert listed == []  # not even the channel was created
    good = await http.post(f"/v1/channels/{channel}/messages", json=[{"data": 1}, {"data": 2}])
    assert good.json() == {"msg_serials": [1, 2]}


async def test_batch_limits(http: httpx.AsyncClient) -> None:
    channel = room()
    empty = await http.post(f"/v1/channels/{channel}/messages", json=[])
    assert empty.json()["error"]["code"] == 40000
    too_many = await http.post(f"/v1/channels/{channel}/messages", json=[{"data": 0}] * 1001)
    assert too_many.json()["error"]["code"] == 40000
    assert "1000" in too_many.json()["error"]["message"]


async def test_idempotent_ids_are_shared_by_rest_batches_and_websocket(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    channel = room()
    url = f"/v1/channels/{channel}/messages"
    first = (await http.post(url, json={"data": "a", "id": "once"})).json()
    again = (await http.post(url, json={"data": "b", "id": "once"})).json()
    assert first == again == {"msg_serial": 1}
    batch = await http.post(url, json=[{"data": "c", "id": "twice"}, {"data": "d", "id": "once"}])
    assert batch.json() == {"msg_serials": [2, 1]}
    ws = await WireClient.connect(server.ws_url, client_id="alice")
    assert (await ws.request("publish", channel=channel, data="e", id="twice"))["serial"] == 2
    await ws.close()
    assert [m["data"] for m in await messages(http, channel)] == ["a", "c"]


async def test_batch_announces_a_new_channel_on_meta_channels(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    channel = room()
    watcher = await WireClient.connect(server.ws_url, client_id="watcher")
    await watcher.request("attach", channel="meta:channels")
    await http.post(f"/v1/channels/{channel}/messages", json=[{"data": 1}, {"data": 2}])
    announced = await watcher.next(
        lambda m: m["action"] == "event" and m["data"] == {"channel": channel}
    )
    assert announced["name"] == "channel.created" and announced["client_id"] is None
    await watcher.close()


async def test_client_id_comes_from_the_header_the_query_or_is_made_up(
    http: httpx.AsyncClient,
) -> None:
    channel = room()
    url = f"/v1/channels/{channel}/messages"
    await http.post(url, json={"data": 1}, headers={"X-Roomcast-Client-Id": "carol"})
    await http.post(url, json={"data": 2}, params={"client_id": "dave"})
    await http.post(url, json={"data": 3})
    authors = [m["client_id"] for m in await messages(http, channel)]
    assert authors[:2] == ["carol", "dave"]
    assert re.fullmatch(r"anon-[0-9a-f]{8}", authors[2])
    bad = await http.post(url, json={"data": 4}, headers={"X-Roomcast-Client-Id": "no spaces"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == 40000


async def test_stream_append_update_annotate_cancel_and_delete(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    channel = room()
    base = f"/v1/channels/{channel}/messages"
    bob = await WireClient.connect(server.ws_url, client_id="bob")
    await bob.request("attach", channel=channel)

    answer = await http.post(base, json={"data": "", "streaming": True}, headers=as_alice())
    msg = answer.json()["msg_serial"]
    for fragment in ("Tacos", " at noon"):
        appended = await http.post(
            f"{base}/{msg}/append", json={"data": fragment}, headers=as_alice()
        )
        assert appended.status_code == 200 and "serial" in appended.json()
    not_author = await http.post(
        f"{base}/{msg}/append", json={"data": "!"}, headers={"X-Roomcast-Client-Id": "bob"}
    )
    assert not_author.json()["error"]["code"] == 40900
    done = await http.patch(
        f"{base}/{msg}", json={"status": "complete", "extras": {"model": "x"}}, headers=as_alice()
    )
    assert done.json() == {"serial": 4}
    same = await http.patch(f"{base}/{msg}", json={"status": "complete"}, headers=as_alice())
    assert same.status_code == 200 and same.json() == {}  # a no-op takes no serial
    closed = await http.post(f"{base}/{msg}/append", json={"data": "late"}, headers=as_alice())
    assert closed.status_code == 409 and closed.json()["error"]["code"] == 40900
    empty_update = await http.patch(f"{base}/{msg}", json={}, headers=as_alice())
    assert empty_update.json()["error"]["code"] == 40000

    reaction = {"kind": "reaction", "name": "taco", "op": "add"}
    bob_h = {"X-Roomcast-Client-Id": "bob"}
    assert (await http.post(f"{base}/{msg}/annotations", json=reaction, headers=bob_h)).json() == {
        "serial": 5
    }
    twice = await http.post(f"{base}/{msg}/annotations", json=reaction, headers=bob_h)
    assert twice.json() == {}

    second = await http.post(base, json={"data": "", "streaming": True}, headers=as_alice())
    other = second.json()["msg_serial"]
    refused = await http.post(f"{base}/{other}/cancel", headers=bob_h)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == 40300
    cancelled = await http.post(
        f"{base}/{other}/cancel", json={"reason": "changed my mind"}, headers=as_alice()
    )
    assert cancelled.status_code == 200 and "serial" in cancelled.json()
    assert (await http.post(f"{base}/{other}/cancel", headers=as_alice())).json() == {}

    deleted = await http.delete(f"{base}/{other}", headers=as_alice())
    assert deleted.status_code == 200 and "serial" in deleted.json()
    assert (await http.delete(f"{base}/{other}", headers=as_alice())).json() == {}

    first, gone = await messages(http, channel)
    assert first["data"] == "Tacos at noon" and first["status"] == "complete"
    assert first["extras"] == {"model": "x"} and first["reactions"] == {"taco": ["bob"]}
    assert gone["deleted"] is True and gone["data"] is None
    assert gone["cancelled_by"] == "alice" and gone["client_id"] == "alice"

    events = await bob.events(channel, 8)
    assert [(e["serial"], e["type"]) for e in events] == list(
        enumerate(
            ["create", "append", "append", "update", "annotation", "create", "cancel", "delete"],
            start=1,
        )
    )
    assert [m for m in await bob.quiet(0.3) if m["action"] == "event"] == []
    await bob.close()


async def test_presence_lists_members(server: ServerProcess, http: httpx.AsyncClient) -> None:
    channel = room()
    assert (await http.get(f"/v1/channels/{channel}/presence")).json() == {"items": []}
    alice = await WireClient.connect(server.ws_url, client_id="alice")
    await alice.request("presence", channel=channel, op="enter", data={"kind": "human"})
    items = (await http.get(f"/v1/channels/{channel}/presence")).json()["items"]
    assert [(p["client_id"], p["connection_id"], p["data"]) for p in items] == [
        ("alice", alice.connected["connection_id"], {"kind": "human"})
    ]
    assert set(items[0]) == {"client_id", "connection_id", "data", "timestamp"}
    await alice.close()


async def test_channel_listing_by_prefix_with_occupancy(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    prefix = f"list{uuid.uuid4().hex[:6]}:"
    for name in ("b", "a", "c"):
        await http.post(f"/v1/channels/{prefix}{name}/messages", json={"data": name})
    await http.post(f"/v1/channels/{prefix}a/messages", json={"data": "again"})
    watcher = await WireClient.connect(server.ws_url, client_id="watcher")
    await watcher.request("attach", channel=f"{prefix}b")
    items = (await http.get("/v1/channels", params={"prefix": prefix})).json()["items"]
    assert [(i["channel"], i["serial"], i["occupancy"]) for i in items] == [
        (f"{prefix}a", 2, 0),
        (f"{prefix}b", 1, 1),
        (f"{prefix}c", 1, 0),
    ]
    assert all(isinstance(i["updated_at"], int) and i["epoch"] for i in items)
    one = (await http.get("/v1/channels", params={"prefix": prefix, "limit": 1})).json()
    assert [i["channel"] for i in one["items"]] == [f"{prefix}a"]
    bad = await http.get("/v1/channels", params={"limit": 0})
    assert bad.status_code == 400 and "limit" in bad.json()["error"]["message"]
    await watcher.close()


ERROR_CASES: list[tuple[str, str, dict[str, Any], int]] = [
    ("POST", "/v1/channels/{ch}/messages", {"content": b"{not json"}, 40000),
    ("POST", "/v1/channels/{ch}/messages", {"json": {"name": "no data"}}, 40000),
    ("POST", "/v1/channels/{ch}/messages", {}, 40000),
    ("POST", "/v1/channels/bad%20name/messages", {"json": {"data": 1}}, 40000),
    ("POST", "/v1/channels/{ch}/messages", {"json": {"data": "x" * 70_000}}, 41300),
    ("POST", "/v1/channels/{ch}/messages", {"content": b"[" + b"1," * 3_000_000 + b"1]"}, 41300),
    ("GET", "/v1/channels/{ch}/messages?before=5&after=1", {}, 40000),
    ("GET", "/v1/channels/{ch}/messages?limit=1001", {}, 40000),
    ("GET", "/v1/channels/{ch}/messages?before=ten", {}, 40000),
    ("PATCH", "/v1/channels/{ch}/messages/999", {"json": {"data": 1}}, 40400),
    ("DELETE", "/v1/channels/{ch}/messages/0", {}, 40000),
    ("POST", "/v1/channels/{ch}/messages/1/append", {"json": {"data": "x"}}, 40900),
    ("POST", "/v1/channels/{ch}/messages/1/annotations", {"json": {"kind": "vote"}}, 40000),
    ("GET", "/v1/channels/{ch}/presence", {"headers": {"Authorization": "Bearer abc"}}, 40100),
    ("GET", "/v1/nowhere", {}, 40400),
    ("PUT", "/v1/channels/{ch}/messages", {}, 40500),
]


async def test_errors_have_one_format_and_status_code_over_100(http: httpx.AsyncClient) -> None:
    channel = room()
    await http.post(f"/v1/channels/{channel}/messages", json={"data": "not streaming"})
    seen: set[str] = set()
    for method, path, kwargs, code in ERROR_CASES:
        response = await http.request(method, path.replace("{ch}", channel), **kwargs)
        assert response.status_code == code // 100, (method, path, response.text)
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {
            "code",
            "message",
            "correlation_id",
        }
        error = body["error"]
        assert error["code"] == code, (method, path, error)
        assert error["message"] and "Traceback" not in error["message"]
        assert re.fullmatch(r"[0-9a-f]{16}", error["correlation_id"])
        assert response.headers["X-Correlation-Id"] == error["correlation_id"]
        seen.add(error["correlation_id"])
    assert len(seen) == len(ERROR_CASES)  # a fresh id for every error
    assert [m["data"] for m in await messages(http, channel)] == ["not streaming"]


async def test_internal_errors_are_50000_with_the_details_only_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from roomcast.server import create_app
    from roomcast.settings import Settings

    app = create_app(Settings(store="memory://"), manage_node=False)
    node = app.state.node
    await node.start()

    async def broken(*args: object, **kwargs: object) -> Any:
        raise RuntimeError("the disk is on fire")

    node.store.history = broken
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            with caplog.at_level(logging.INFO, logger="roomcast.http"):
                response = await client.get("/v1/channels/room:a/messages")
    finally:
        await node.stop()
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == 50000 and "fire" not in error["message"]
    assert error["correlation_id"] in error["message"]
    [record] = [r for r in caplog.records if error["correlation_id"] in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "fire" in str(record.exc_info[1])


@pytest.fixture(scope="module")
def narrow_server(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    capability = {"room:*": ["*"], "inbox:*": ["publish"]}
    env = {**test_env, "ROOMCAST_ANONYMOUS_CAPABILITY": json.dumps(capability)}
    with ServerProcess(env=env) as proc:
        yield proc


async def test_capability_limits_every_route(narrow_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=narrow_server.url) as http:
        inbox, other = f"inbox:{uuid.uuid4().hex[:6]}", f"other:{uuid.uuid4().hex[:6]}"
        assert (
            await http.post(f"/v1/channels/{inbox}/messages", json={"data": 1})
        ).status_code == 200
        await http.post("/v1/channels/room:visible/messages", json={"data": 1})
        for method, path, kwargs in [
            ("POST", f"/v1/channels/{other}/messages", {"json": {"data": 1}}),
            ("POST", f"/v1/channels/{other}/messages", {"json": [{"data": 1}]}),
            ("GET", f"/v1/channels/{inbox}/messages", {}),
            ("GET", f"/v1/channels/{inbox}/presence", {}),
            ("GET", f"/v1/channels/{inbox}/events", {}),
            (
                "POST",
                f"/v1/channels/{inbox}/messages/1/annotations",
                {"json": {"kind": "reaction", "name": "x", "op": "add"}},
            ),
        ]:
            response = await http.request(method, path, **kwargs)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"]["code"] == 40300
        listed = (await http.get("/v1/channels")).json()["items"]
        assert [i["channel"] for i in listed] == ["room:visible"]
        assert (await http.get("/v1/channels", params={"prefix": other})).json() == {"items": []}


async def test_without_anonymous_access_every_route_is_40100(test_env: dict[str, str]) -> None:
    with ServerProcess(env={**test_env, "ROOMCAST_ALLOW_ANONYMOUS": "0"}) as closed:
        async with httpx.AsyncClient(base_url=closed.url) as http:
            for method, path in [
                ("POST", "/v1/channels/room:a/messages"),
                ("GET", "/v1/channels/room:a/messages"),
                ("GET", "/v1/channels"),
                ("GET", "/v1/channels/room:a/events"),
            ]:
                response = await http.request(method, path, json={"data": 1})
                assert response.status_code == 401, (method, path)
                assert response.json()["error"]["code"] == 40100
            assert (await http.get("/healthz")).status_code == 200


def curl_commands(markdown: str) -> list[str]:
    """The curl commands of the ```sh blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip().startswith("curl"):
                commands.append(command.strip())
    return commands


def test_the_curl_examples_in_docs_http_run(test_env: dict[str, str]) -> None:
    commands = curl_commands((ROOT / "docs" / "http.md").read_text())
    assert len(commands) >= 10
    # the key of the POST /v1/tokens example; anonymous access stays on for the others
    env = {**test_env, "ROOMCAST_KEYS": "demo:s3cret", "ROOMCAST_ALLOW_ANONYMOUS": "1"}
    with ServerProcess(env=env) as server:
        for command in commands:
            args = shlex.split(command.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}"))
            streaming = "-N" in args
            if streaming:
                args[1:1] = ["--max-time", "1"]
            result = subprocess.run(args, capture_output=True, text=True, timeout=30)
            assert result.returncode == (28 if streaming else 0), (command, result.stderr)
            if not streaming and result.stdout.startswith("{"):
                body = json.loads(result.stdout)
                assert body.get("error", {}).get("code") != 50000, (command, body)
                if "/v1/tokens" in command:
                    assert "token" in body, body


async def test_pages_of_other_origins_are_refused_unless_allowed(test_env: dict[str, str]) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    env = {**test_env, "ROOMCAST_ALLOWED_ORIGINS": "https://chat.example.com"}
    with ServerProcess(store="memory://", env=env) as proc:
        with pytest.raises(InvalidStatus) as refused:
            await connect(proc.ws_url, origin="https://evil.example.net")
        assert refused.value.response.status_code == 403
        for origin in ("https://chat.example.com", f"http://127.0.0.1:{proc.port}", None):
            async with connect(proc.ws_url, origin=origin) as ws:
                assert json.loads(await ws.recv())["action"] == "connected"
        async with httpx.AsyncClient(base_url=proc.url) as http:
            url = "/v1/channels/room:o/messages"
            evil = await http.post(
                url, json={"data": 1}, headers={"Origin": "https://evil.example.net"}
            )
            assert evil.status_code == 403 and evil.json()["error"]["code"] == 40300
            good = await http.post(
                url, json={"data": 1}, headers={"Origin": "https://chat.example.com"}
            )
            assert good.status_code == 200
            assert good.headers["access-control-allow-origin"] == "https://chat.example.com"
            preflight = await http.options(
                url,
                headers={
                    "Origin": "https://chat.example.com",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, content-type",
                },
            )
            assert preflight.status_code == 200
            history = await http.get(url)
            assert [m["data"] for m in history.json()["items"]] == [1]  # the refused one is not
