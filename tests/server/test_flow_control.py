"""Slow consumers, heartbeats, and pipelined publishing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from roomcast.testing import ServerProcess, WireClient


@pytest.fixture(scope="module")
def tight_server(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    env = {**test_env, "ROOMCAST_OUTBOUND_QUEUE": "64", "ROOMCAST_HEARTBEAT_S": "1"}
    with ServerProcess(env=env) as proc:
        yield proc


async def test_slow_consumer_is_closed_with_4008_and_resumes_without_loss(
    tight_server: ServerProcess,
) -> None:
    channel = "room:slow"
    url = tight_server.ws_url
    # A subscriber that stops reading: its socket buffers fill, then the server's queue does.
    slow = await ws_connect(url + "?client_id=slow", max_queue=1, max_size=None)
    connected = json.loads(await slow.recv())
    await slow.send(json.dumps({"action": "attach", "channel": channel, "ref": 1}))
    attached = json.loads(await slow.recv())
    assert attached["action"] == "attached"

    publisher = await WireClient.connect(url, client_id="publisher")
    payload = "x" * 20_000
    total = 600
    for k in range(total):
        await publisher.send({"action": "publish", "channel": channel, "data": [k, payload]})
    await publisher.request("ping", timeout=30)

    seen: list[int] = []
    code = None
    try:
        while True:
            frame = json.loads(await asyncio.wait_for(slow.recv(), 30))
            for item in frame if isinstance(frame, list) else [frame]:
                if item["action"] == "event":
                    seen.append(item["serial"])
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
    assert code == 4008
    assert seen == list(range(1, len(seen) + 1))
    assert len(seen) < total

    again = await WireClient.connect(url, client_id="slow", resume=connected["resume_key"])
    assert again.connected["connection_id"] == connected["connection_id"]
    reply = await again.request(
        "attach", channel=channel, from_serial=seen[-1] if seen else 0, epoch=attached["epoch"]
    )
    assert reply["resumed"] is True
    rest = await again.events(channel, total - len(seen), timeout=30)
    assert [e["serial"] for e in rest] == list(range(len(seen) + 1, total + 1))
    await again.close()
    await publisher.close()


async def test_idle_connection_gets_heartbeats(tight_server: ServerProcess) -> None:
    client = await WireClient.connect(tight_server.ws_url, client_id="idle")
    assert client.connected["heartbeat_s"] == 1
    beat = await client.next(lambda m: m["action"] == "heartbeat", timeout=5)
    assert beat == {"action": "heartbeat"}
    await client.close()


async def test_pipelined_publishes_share_commits_and_keep_order(server: ServerProcess) -> None:
    client = await WireClient.connect(server.ws_url, client_id="fast")
    frames = [
        {"action": "publish", "channel": "room:pipe", "data": k, "ref": k + 1} for k in range(2000)
    ]
    for start in range(0, 2000, 100):
        await client.send(frames[start : start + 100])
    replies = [await client.next(lambda m, r=k + 1: m.get("ref") == r) for k in range(2000)]
    assert [r["serial"] for r in replies] == list(range(1, 2001))
    await client.close()


async def test_publish_rate_limit_gives_42900_and_the_connection_stays_usable(
    test_env: dict[str, str],
) -> None:
    env = {**test_env, "ROOMCAST_PUBLISH_RATE": "2", "ROOMCAST_PUBLISH_BURST": "3"}
    with ServerProcess(store="memory://", env=env) as proc:
        client = await WireClient.connect(proc.ws_url, client_id="chatty")
        assert client.connected["limits"]["publish_rate"] == 2
        replies = [await client.request("publish", channel="room:r", data=k) for k in range(5)]
        assert [r["action"] for r in replies[:3]] == ["ok", "ok", "ok"]
        assert replies[3]["code"] == 42900 and replies[4]["code"] == 42900
        assert (await client.request("ping"))["action"] == "pong"
        await asyncio.sleep(0.6)
        assert (await client.request("publish", channel="room:r", data="later"))["serial"] == 4
        await client.close()


async def test_catching_up_more_than_one_replay_page_has_no_gap(server: ServerProcess) -> None:
    channel = "room:catchup"
    writer = await WireClient.connect(server.ws_url, client_id="writer")
    reader = await WireClient.connect(server.ws_url, client_id="reader")
    attached = await reader.request("attach", channel=channel)
    await reader.close()
    total = 12_000  # more than two pages of replay
    for start in range(0, total, 500):
        await writer.send(
            [
                {"action": "publish", "channel": channel, "data": k}
                for k in range(start, start + 500)
            ]
        )
    assert (await writer.request("publish", channel=channel, data="last", timeout=60))[
        "serial"
    ] == total + 1

    back = await WireClient.connect(server.ws_url, client_id="reader")
    reply = await back.request("attach", channel=channel, from_serial=0, epoch=attached["epoch"])
    assert reply["resumed"] is True and reply["serial"] == total + 1
    await writer.request("publish", channel=channel, data="live")
    events = await back.events(channel, total + 2, timeout=60)
    assert [e["serial"] for e in events] == list(range(1, total + 3))
    assert events[-1]["data"] == "live"
    await writer.close()
    await back.close()


async def test_appends_have_their_own_rate_limit(test_env: dict[str, str]) -> None:
    env = {**test_env, "ROOMCAST_PUBLISH_RATE": "50", "ROOMCAST_APPEND_RATE": "2"}
    with ServerProcess(store="memory://", env=env) as proc:
        client = await WireClient.connect(proc.ws_url, client_id="streamer")
        assert client.connected["limits"]["append_rate"] == 2
        ok = await client.request("publish", channel="room:s", data="", streaming=True)
        replies = [
            await client.request("append", channel="room:s", msg_serial=ok["serial"], data="x")
            for _ in range(10)
        ]
        codes = [r.get("code") for r in replies]
        assert codes[:8] == [None] * 8  # a burst of four seconds' worth
        assert codes[8:] == [42900, 42900]
        # publishes are counted apart, and still go through
        assert (await client.request("publish", channel="room:s", data="hi"))["action"] == "ok"
        await client.close()


async def test_others_keep_receiving_while_one_client_floods(test_env: dict[str, str]) -> None:
    """A flood is cut at the rate limit (42900, connection usable) and does not starve the
    other clients; the bound here is generous, the latency is measured in bench/."""
    env = {**test_env, "ROOMCAST_PUBLISH_RATE": "50", "ROOMCAST_PUBLISH_BURST": "200"}
    with ServerProcess(env=env) as proc:
        flooder = await WireClient.connect(proc.ws_url, client_id="flooder")
        speaker = await WireClient.connect(proc.ws_url, client_id="speaker")
        listener = await WireClient.connect(proc.ws_url, client_id="listener")
        await listener.request("attach", channel="room:calm")

        async def flood() -> None:
            for _ in range(20):
                await flooder.send(
                    [{"action": "publish", "channel": "room:flood", "data": k} for k in range(100)]
                )
                await asyncio.sleep(0.05)

        flooding = asyncio.create_task(flood())
        loop = asyncio.get_running_loop()
        worst = 0.0
        for k in range(10):
            started = loop.time()
            await speaker.request("publish", channel="room:calm", data=k)
            [event] = await listener.events("room:calm", 1, timeout=10)
            assert event["data"] == k
            worst = max(worst, loop.time() - started)
            await asyncio.sleep(0.1)
        await flooding
        replies = await flooder.quiet(1.0)
        limited = sum(1 for m in replies if m.get("code") == 42900)
        assert limited > 0  # the flood was cut
        assert (await flooder.request("ping"))["action"] == "pong"  # and stays usable
        assert worst < 2.0, worst
        for c in (flooder, speaker, listener):
            await c.close()


async def test_channel_connection_and_presence_limits(test_env: dict[str, str]) -> None:
    env = {
        **test_env,
        "ROOMCAST_MAX_CHANNELS_PER_CONNECTION": "2",
        "ROOMCAST_MAX_CONNECTIONS_PER_CLIENT": "2",
        "ROOMCAST_MAX_PRESENCE_MEMBERS": "2",
    }
    with ServerProcess(store="memory://", env=env) as proc:
        a1 = await WireClient.connect(proc.ws_url, client_id="ann")
        a2 = await WireClient.connect(proc.ws_url, client_id="ann")
        # A third connection of one client_id: an error, then close 1013.
        async with ws_connect(proc.ws_url + "?client_id=ann") as a3:
            error = json.loads(await a3.recv())
            assert error["action"] == "error" and error["code"] == 42900
            await a3.wait_closed()
            assert a3.close_code == 1013

        assert (await a1.request("attach", channel="room:1"))["action"] == "attached"
        assert (await a1.request("attach", channel="room:2"))["action"] == "attached"
        third = await a1.request("attach", channel="room:3")
        assert third["action"] == "error" and third["code"] == 42900
        assert (await a1.request("attach", channel="room:1"))["action"] == "attached"  # again

        b = await WireClient.connect(proc.ws_url, client_id="bea")
        for c in (a1, a2):
            assert (await c.request("presence", channel="room:p", op="enter"))["action"] == "ok"
        full = await b.request("presence", channel="room:p", op="enter")
        assert full["action"] == "error" and full["code"] == 42900
        again = await a1.request("presence", channel="room:p", op="update", data=1)
        assert again["action"] == "ok"  # members already present can still update

        await a2.close()  # a slot frees up
        await asyncio.sleep(0.3)
        a4 = await WireClient.connect(proc.ws_url, client_id="ann")
        assert a4.connected["client_id"] == "ann"
        for c in (a1, a4, b):
            await c.close()
