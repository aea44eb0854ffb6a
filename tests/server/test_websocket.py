"""docs/protocol.md §2, §4 and §8 over a real WebSocket, against a real server process."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from roomcast.testing import ServerProcess, WireClient


def room() -> str:
    return f"room:{uuid.uuid4().hex[:10]}"


async def test_publish_reaches_other_subscriber_and_history(server: ServerProcess) -> None:
    channel = room()
    a = await WireClient.connect(server.ws_url, client_id="alice")
    b = await WireClient.connect(server.ws_url, client_id="bob")
    for c in (a, b):
        attached = await c.request("attach", channel=channel)
        assert attached["action"] == "attached" and attached["serial"] == 0
        assert attached["presence"] == []  # always present, even when empty
    ok = await a.request("publish", channel=channel, data={"text": "hello"})
    assert ok == {"action": "ok", "ref": ok["ref"], "serial": 1}
    [event] = await b.events(channel, 1)
    assert event["serial"] == 1 and event["type"] == "create"
    assert event["client_id"] == "alice" and event["data"] == {"text": "hello"}
    history = await b.request("history", channel=channel)
    assert [m["data"] for m in history["messages"]] == [{"text": "hello"}]
    assert history["messages"][0]["msg_serial"] == 1
    assert history["messages"][0]["status"] == "complete"
    assert history["has_more"] is False
    await a.close()
    await b.close()


async def test_publish_with_same_id_is_stored_once(server: ServerProcess) -> None:
    channel = room()
    a = await WireClient.connect(server.ws_url, client_id="alice")
    first = await a.request("publish", channel=channel, data=1, id="once")
    again = await a.request("publish", channel=channel, data=2, id="once")
    other = await a.request("publish", channel=channel, data=3, id="twice")
    assert first["serial"] == again["serial"] == 1
    assert other["serial"] == 2
    history = await a.request("history", channel=channel)
    assert [m["data"] for m in history["messages"]] == [1, 3]
    await a.close()


async def test_resume_after_drop_replays_exactly_the_missed_events(server: ServerProcess) -> None:
    channel = room()
    a = await WireClient.connect(server.ws_url, client_id="alice")
    b = await WireClient.connect(server.ws_url, client_id="bob")
    attached = await b.request("attach", channel=channel)
    await a.request("publish", channel=channel, data="before")
    [seen] = await b.events(channel, 1)
    b.drop()

    refs = []
    for k in range(500):
        ref = a.next_ref()
        refs.append(ref)
        await a.send({"action": "publish", "channel": channel, "data": k, "ref": ref})
    oks = [await a.next(lambda m, r=r: m.get("ref") == r) for r in refs]
    assert [ok["serial"] for ok in oks] == list(range(2, 502))

    b2 = await WireClient.connect(server.ws_url, client_id="bob")
    reply = await b2.request(
        "attach", channel=channel, from_serial=seen["serial"], epoch=attached["epoch"]
    )
    assert reply["resumed"] is True and reply["serial"] == 501
    events = await b2.events(channel, 500)
    assert [e["serial"] for e in events] == list(range(2, 502))
    assert [e["data"] for e in events] == list(range(500))
    assert [m for m in await b2.quiet(0.3) if m["action"] == "event"] == []

    stale = await b2.request("attach", channel=channel, from_serial=10, epoch="not-the-epoch")
    assert stale["resumed"] is False
    gone = await b2.next(lambda m: m["action"] == "discontinuity")
    assert gone["channel"] == channel and "epoch" in gone["reason"]
    ahead = await b2.request("attach", channel=channel, from_serial=9999)
    assert ahead["resumed"] is False
    beyond = await b2.next(lambda m: m["action"] == "discontinuity")
    assert "beyond" in beyond["reason"]
    assert [m for m in await b2.quiet(0.3) if m["action"] == "event"] == []
    await a.close()
    await b2.close()


async def test_rewind_gives_the_last_messages_then_live_ones(server: ServerProcess) -> None:
    channel = room()
    a = await WireClient.connect(server.ws_url, client_id="alice")
    for k in range(25):
        await a.request("publish", channel=channel, data=k)
    late = await WireClient.connect(server.ws_url, client_id="late")
    attached = await late.request("attach", channel=channel, rewind=10)
    assert attached["serial"] == 25
    assert [m["data"] for m in attached["messages"]] == list(range(15, 25))
    assert [m["msg_serial"] for m in attached["messages"]] == list(range(16, 26))
    await a.request("publish", channel=channel, data="live")
    [live] = await late.events(channel, 1)
    assert live["serial"] == 26 and live["data"] == "live"
    await a.close()
    await late.close()


async def test_presence_enter_update_and_late_attach(server: ServerProcess) -> None:
    channel = room()
    a = await WireClient.connect(server.ws_url, client_id="alice")
    b = await WireClient.connect(server.ws_url, client_id="bob")
    await b.request("attach", channel=channel)
    await a.request("attach", channel=channel)
    assert (await a.request("presence", channel=channel, op="enter", data={"mood": "hungry"}))[
        "action"
    ] == "ok"
    entered = await b.next(lambda m: m["action"] == "presence")
    assert entered["op"] == "enter" and entered["client_id"] == "alice"
    assert entered["data"] == {"mood": "hungry"}
    assert entered["connection_id"] == a.connected["connection_id"]
    await a.request("presence", channel=channel, op="update", data={"mood": "full"})
    updated = await b.next(lambda m: m["action"] == "presence")
    assert updated["op"] == "update" and updated["data"] == {"mood": "full"}

    c = await WireClient.connect(server.ws_url, client_id="carol")
    attached = await c.request("attach", channel=channel)
    assert [(p["client_id"], p["data"]) for p in attached["presence"]] == [
        ("alice", {"mood": "full"})
    ]
    assert set(attached["presence"][0]) == {"client_id", "connection_id", "data", "timestamp"}

    await a.close()  # a clean close: the leave is immediate
    left = await b.next(lambda m: m["action"] == "presence", timeout=1.0)
    assert left["op"] == "leave" and left["client_id"] == "alice"
    await b.close()
    await c.close()


async def test_dropped_connection_leaves_after_grace(server: ServerProcess) -> None:
    channel = room()
    a = await WireClient.connect(server.ws_url, client_id="alice")
    b = await WireClient.connect(server.ws_url, client_id="bob")
    await b.request("attach", channel=channel)
    await a.request("presence", channel=channel, op="enter", data=None)
    await b.next(lambda m: m["action"] == "presence" and m["op"] == "enter")
    loop = asyncio.get_running_loop()
    dropped_at = loop.time()
    a.drop()
    left = await b.next(lambda m: m["action"] == "presence", timeout=10)
    waited = loop.time() - dropped_at
    assert left["op"] == "leave" and left["client_id"] == "alice"
    assert 1.5 <= waited <= 6, waited  # the grace period is 2 s in these tests
    await b.close()


async def test_resume_within_grace_keeps_connection_and_presence(server: ServerProcess) -> None:
    channel = room()
    a = await WireClient.connect(server.ws_url, client_id="alice")
    b = await WireClient.connect(server.ws_url, client_id="bob")
    await b.request("attach", channel=channel)
    await a.request("presence", channel=channel, op="enter", data={"n": 1})
    await b.next(lambda m: m["action"] == "presence" and m["op"] == "enter")
    a.drop()
    await asyncio.sleep(0.5)
    a2 = await WireClient.connect(
        server.ws_url, client_id="alice", resume=a.connected["resume_key"]
    )
    assert a2.connected["resumed"] is True
    assert a2.connected["connection_id"] == a.connected["connection_id"]
    # Well past the 2 s grace period: no leave may be seen, and alice is still present.
    assert [m for m in await b.quiet(3.5) if m["action"] == "presence"] == []
    late = await WireClient.connect(server.ws_url, client_id="dave")
    attached = await late.request("attach", channel=channel)
    assert [(p["client_id"], p["connection_id"]) for p in attached["presence"]] == [
        ("alice", a.connected["connection_id"])
    ]
    await a2.close()
    left = await b.next(lambda m: m["action"] == "presence", timeout=2)
    assert left["op"] == "leave"
    await b.close()
    await late.close()


async def test_unknown_or_foreign_resume_key_gives_a_new_connection(
    server: ServerProcess,
) -> None:
    a = await WireClient.connect(server.ws_url, client_id="alice")
    key = a.connected["resume_key"]
    await a.close()
    stranger = await WireClient.connect(server.ws_url, client_id="mallory", resume=key)
    assert stranger.connected["resumed"] is False
    assert stranger.connected["connection_id"] != a.connected["connection_id"]
    nobody = await WireClient.connect(server.ws_url, client_id="x", resume="r-unknown")
    assert nobody.connected["resumed"] is False
    again = await WireClient.connect(server.ws_url, client_id="alice", resume=key)
    assert again.connected["resumed"] is True
    assert again.connected["connection_id"] == a.connected["connection_id"]
    for c in (stranger, nobody, again):
        await c.close()


async def test_resume_closes_a_half_open_old_connection(server: ServerProcess) -> None:
    a = await WireClient.connect(server.ws_url, client_id="alice")
    a2 = await WireClient.connect(
        server.ws_url, client_id="alice", resume=a.connected["resume_key"]
    )
    assert a2.connected["resumed"] is True
    await asyncio.wait_for(a.closed.wait(), 5)
    assert a2.connected["connection_id"] == a.connected["connection_id"]
    await a2.close()


async def test_frame_that_is_not_json_closes_with_1007(server: ServerProcess) -> None:
    a = await WireClient.connect(server.ws_url, client_id="alice")
    await a.send("this is not json")
    await asyncio.wait_for(a.closed.wait(), 5)
    assert a.close_code == 1007


async def test_binary_frame_in_json_mode_closes_with_1003(server: ServerProcess) -> None:
    a = await WireClient.connect(server.ws_url, client_id="alice")
    await a.ws.send(b'{"action":"ping"}')
    await asyncio.wait_for(a.closed.wait(), 5)
    assert a.close_code == 1003


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        ({"action": "teleport", "channel": "room:x"}, "action"),
        ({"action": "publish", "channel": "room:x"}, "data"),
        ({"action": "publish", "channel": "room:x", "data": 1, "name": 5}, "name"),
        ({"action": "publish", "channel": "no spaces allowed", "data": 1}, "channel"),
        ({"action": "publish", "channel": "", "data": 1}, "channel"),
        ({"action": "history", "channel": "room:x", "limit": 1001}, "limit"),
        ({"action": "history", "channel": "room:x", "before": 5, "after": 1}, "before"),
        ({"action": "attach", "channel": "room:x", "from_serial": "ten"}, "from_serial"),
    ],
)
async def test_bad_requests_get_40000_and_the_connection_stays_usable(
    server: ServerProcess, request_: dict[str, object], words: str
) -> None:
    channel = room()
    a = await WireClient.connect(server.ws_url, client_id="alice")
    await a.request("publish", channel=channel, data="keep")
    ref = a.next_ref()
    await a.send({**request_, "ref": ref})
    error = await a.next(lambda m: m.get("ref") == ref)
    assert error["action"] == "error" and error["code"] == 40000
    assert words in error["message"]
    assert (await a.request("ping"))["action"] == "pong"
    history = await a.request("history", channel=channel)
    assert [m["data"] for m in history["messages"]] == ["keep"]
    await a.close()


async def test_unknown_msg_serial_gets_40400_and_changes_nothing(server: ServerProcess) -> None:
    channel = room()
    a = await WireClient.connect(server.ws_url, client_id="alice")
    await a.request("publish", channel=channel, data="keep")
    for action in ("update", "delete"):
        fields = {"data": "x"} if action == "update" else {}
        error = await a.request(action, channel=channel, msg_serial=42, **fields)
        assert error["action"] == "error" and error["code"] == 40400, error
    history = await a.request("history", channel=channel)
    assert [(m["msg_serial"], m["data"]) for m in history["messages"]] == [(1, "keep")]
    next_ok = await a.request("publish", channel=channel, data="next")
    assert next_ok["serial"] == 2  # the refused requests took no serial
    await a.close()


async def test_batched_requests_in_one_frame_are_answered_in_order(server: ServerProcess) -> None:
    channel = room()
    a = await WireClient.connect(server.ws_url, client_id="alice")
    await a.send(
        [
            {"action": "publish", "channel": channel, "data": 1, "ref": 101},
            {"action": "bogus", "ref": 102},
            {"action": "publish", "channel": channel, "data": 2, "ref": 103},
            {"action": "ping", "ref": 104},
        ]
    )
    replies = [await a.next(lambda m, r=r: m.get("ref") == r) for r in (101, 102, 103, 104)]
    assert [r["action"] for r in replies] == ["ok", "error", "ok", "pong"]
    assert replies[0]["serial"] == 1 and replies[2]["serial"] == 2
    await a.close()


async def test_detach_stops_events(server: ServerProcess) -> None:
    channel = room()
    a = await WireClient.connect(server.ws_url, client_id="alice")
    b = await WireClient.connect(server.ws_url, client_id="bob")
    await b.request("attach", channel=channel)
    detached = await b.request("detach", channel=channel)
    assert detached["action"] == "detached" and detached["channel"] == channel
    await a.request("publish", channel=channel, data=1)
    assert [m for m in await b.quiet(0.3) if m["action"] == "event"] == []
    await a.close()
    await b.close()


async def test_signals_reach_attached_clients_and_are_not_stored(server: ServerProcess) -> None:
    channel = room()
    a = await WireClient.connect(server.ws_url, client_id="alice")
    b = await WireClient.connect(server.ws_url, client_id="bob")
    await b.request("attach", channel=channel)
    await a.send({"action": "signal", "channel": channel, "name": "typing", "data": True})
    signal = await b.next(lambda m: m["action"] == "signal")
    assert signal == {
        "action": "signal",
        "channel": channel,
        "client_id": "alice",
        "name": "typing",
        "data": True,
    }
    history = await b.request("history", channel=channel)
    assert history["messages"] == []
    await a.close()
    await b.close()


async def test_first_event_announces_the_channel_on_meta_channels(server: ServerProcess) -> None:
    channel = room()
    watcher = await WireClient.connect(server.ws_url, client_id="watcher")
    await watcher.request("attach", channel="meta:channels")
    a = await WireClient.connect(server.ws_url, client_id="alice")
    await a.request("publish", channel=channel, data=1)
    await a.request("publish", channel=channel, data=2)
    announced = await watcher.next(
        lambda m: m["action"] == "event" and m["data"] == {"channel": channel}
    )
    assert announced["name"] == "channel.created" and announced["client_id"] is None
    rest = await watcher.quiet(0.3)
    assert [m for m in rest if m.get("data") == {"channel": channel}] == []
    await a.close()
    await watcher.close()


async def test_oversize_message_gets_41300_and_the_connection_stays_open(
    server: ServerProcess,
) -> None:
    channel = room()
    a = await WireClient.connect(server.ws_url, client_id="alice")
    for size in (70_000, 2 * 65_536 - 100):  # up to 2 x max_message_bytes is answered
        error = await a.request("publish", channel=channel, data="x" * size)
        assert error["action"] == "error" and error["code"] == 41300, error
    assert (await a.request("publish", channel=channel, data="small"))["serial"] == 1
    await a.close()


async def test_msgpack_format_speaks_the_same_protocol(server: ServerProcess) -> None:
    import msgspec
    from websockets.asyncio.client import connect

    channel = room()
    async with connect(server.ws_url + "?client_id=packer&format=msgpack") as ws:
        connected = msgspec.msgpack.decode(await ws.recv())
        assert connected["action"] == "connected"
        await ws.send(msgspec.msgpack.encode({"action": "attach", "channel": channel, "ref": 1}))
        assert msgspec.msgpack.decode(await ws.recv())["action"] == "attached"
        await ws.send(
            msgspec.msgpack.encode(
                {"action": "publish", "channel": channel, "data": [1, 2.5, "3"], "ref": 2}
            )
        )
        frames: list[dict[str, object]] = []
        while len(frames) < 2:
            decoded = msgspec.msgpack.decode(await ws.recv())
            frames.extend(decoded if isinstance(decoded, list) else [decoded])
        assert {f["action"] for f in frames} == {"event", "ok"}


async def test_health_and_readiness(server: ServerProcess) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).json() == {"status": "ok"}


async def test_connection_errors_come_as_an_error_then_a_close(server: ServerProcess) -> None:
    from websockets.asyncio.client import connect

    for query, code, close in [
        ("?client_id=bad%20name", 40000, 1003),
        ("?format=xml", 40000, 1003),
        ("?token=abc", 40100, 4001),
    ]:
        async with connect(server.ws_url + query) as ws:
            error = json.loads(await ws.recv())
            assert error["action"] == "error" and error["code"] == code, query
            await ws.wait_closed()
            assert ws.close_code == close, query


async def test_frames_of_every_header_size_arrive_intact(server: ServerProcess) -> None:
    """Fan-out writes frame headers itself: 7-, 16- and 64-bit payload lengths (RFC 6455)."""
    from websockets.asyncio.client import connect

    channel = room()
    writer = await WireClient.connect(server.ws_url, client_id="writer")
    text = "é" * 500  # multi-byte UTF-8, 1,000 bytes
    for _ in range(200):
        await writer.send({"action": "publish", "channel": channel, "data": text})
    await writer.request("ping")
    sizes: list[int] = []
    events = 0
    async with connect(server.ws_url + "?client_id=reader", max_size=None) as ws:
        await ws.recv()  # connected
        await ws.send(json.dumps({"action": "ping", "ref": 1}))
        await ws.send(json.dumps({"action": "attach", "channel": channel, "from_serial": 0}))
        while events < 200:
            frame = await ws.recv()
            sizes.append(len(frame.encode() if isinstance(frame, str) else frame))
            decoded = json.loads(frame)
            for item in decoded if isinstance(decoded, list) else [decoded]:
                if item["action"] == "event":
                    assert item["data"] == text
                    events += 1
        await writer.request("publish", channel=channel, data=text)
        live = json.loads(await ws.recv())
        sizes.append(len(json.dumps(live).encode()))
        assert live["data"] == text
    assert min(sizes) < 126 and max(sizes) > 65_535
    assert any(126 <= n <= 65_535 for n in sizes)
    await writer.close()


CLAIMER = "ops:" + "c" * 32


@pytest.fixture(scope="module")
def claims_server(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    """A key, and anonymous access on too."""
    env = {**test_env, "ROOMCAST_KEYS": CLAIMER, "ROOMCAST_ALLOW_ANONYMOUS": "1"}
    with ServerProcess(store="memory://", env=env) as proc:
        yield proc


async def claim_reply(client: WireClient, channel: str, key: str, ttl_s: float = 1) -> Any:
    reply = await client.request("claim", channel=channel, key=key, ttl_s=ttl_s)
    if reply["action"] == "error":
        return reply["code"]
    assert reply["action"] == "ok", reply
    return reply["granted"]


async def test_a_claim_belongs_to_one_connection_until_its_ttl(
    claims_server: ServerProcess,
) -> None:
    channel = room()
    # Two workers of one agent share a client_id: the claim still goes to exactly one.
    first = await WireClient.connect(claims_server.ws_url, key=CLAIMER, client_id="worker")
    second = await WireClient.connect(claims_server.ws_url, key=CLAIMER, client_id="worker")

    async def claim(client: WireClient, key: str = "answer:17") -> Any:
        return await claim_reply(client, channel, key)

    assert await claim(first) is True
    assert await claim(second) is False
    assert await claim(first) is True  # the holder may renew it
    assert await claim(second, "answer:18") is True  # other keys are free
    await asyncio.sleep(1.2)
    assert await claim(second) is True  # the ttl passed
    await first.close()
    await second.close()


async def test_an_anonymous_client_cannot_squat_the_agents_claims(
    claims_server: ServerProcess,
) -> None:
    channel = room()
    mallory = await WireClient.connect(claims_server.ws_url, client_id="mallory")
    for serial in range(1, 4):
        assert await claim_reply(mallory, channel, f"answer:assistant:{serial}", 86400) == 40300
    assert await claim_reply(mallory, channel, "lock:1", 86400) == 40300  # no claim by default
    agent = await WireClient.connect(claims_server.ws_url, key=CLAIMER, client_id="assistant")
    assert await claim_reply(agent, channel, "answer:assistant:1", 30) is True
    await mallory.close()
    await agent.close()


async def test_the_largest_history_page_is_a_setting(test_env: dict[str, str]) -> None:
    import httpx

    env = {**test_env, "ROOMCAST_MAX_HISTORY_LIMIT": "50"}
    with ServerProcess(store="memory://", env=env) as proc:
        channel = room()
        client = await WireClient.connect(proc.ws_url, client_id="alice")
        assert client.connected["limits"]["history_limit"] == 50
        for i in range(60):
            await client.request("publish", channel=channel, data=i)
        page = await client.request("history", channel=channel, limit=50)
        assert len(page["messages"]) == 50 and page["has_more"] is True
        refused = await client.request("history", channel=channel, limit=51)
        assert refused["action"] == "error" and refused["code"] == 40000
        assert "50" in refused["message"]
        assert (await client.request("ping"))["action"] == "pong"  # still usable
        async with httpx.AsyncClient(base_url=proc.url) as http:
            response = await http.get(f"/v1/channels/{channel}/messages", params={"limit": 51})
        assert response.status_code == 400 and response.json()["error"]["code"] == 40000
        await client.close()


async def test_an_attach_with_types_gets_only_events_of_those_types(
    server: ServerProcess,
) -> None:
    channel = room()
    a = await WireClient.connect(server.ws_url, client_id="alice")
    b = await WireClient.connect(server.ws_url, client_id="bob")
    created = await a.request("publish", channel=channel, data="", streaming=True)
    await a.request("append", channel=channel, msg_serial=created["serial"], data="one ")
    attached = await b.request("attach", channel=channel, from_serial=0, types=["create", "update"])
    assert attached["action"] == "attached" and attached["serial"] == 2
    await a.request("append", channel=channel, msg_serial=created["serial"], data="two")
    await a.request("update", channel=channel, msg_serial=created["serial"], status="complete")
    await a.request("publish", channel=channel, data="after")
    events = [m for m in await b.quiet(0.5) if m["action"] == "event"]
    assert [(e["serial"], e["type"]) for e in events] == [
        (1, "create"),
        (4, "update"),
        (5, "create"),
    ]
    refused = await b.request("attach", channel=channel, types=["create", "typing"])
    assert refused["action"] == "error" and refused["code"] == 40000
    refused = await b.request("attach", channel=channel, types=[])
    assert refused["action"] == "error" and refused["code"] == 40000
    await a.close()
    await b.close()
