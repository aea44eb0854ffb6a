"""Slow consumers, heartbeats, and pipelined publishing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection
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


async def test_signals_and_presence_have_a_rate_and_readers_stay_open(
    test_env: dict[str, str],
) -> None:
    limits = {"PUBLISH_RATE": "50", "EPHEMERAL_RATE": "5", "EPHEMERAL_BURST": "20"}
    env = test_env | {f"ROOMCAST_{name}": value for name, value in limits.items()}
    with ServerProcess(store="memory://", env=env) as proc:
        reader = await WireClient.connect(proc.ws_url, client_id="reader")
        await reader.request("attach", channel="room:typing")
        flooder = await WireClient.connect(proc.ws_url, client_id="flooder")
        assert flooder.connected["limits"]["ephemeral_rate"] == 5
        signal = {"action": "signal", "channel": "room:typing", "name": "typing"}
        await flooder.send([signal] * 500)
        presence = await flooder.request("presence", channel="room:typing", op="enter")
        assert presence["code"] == 42900  # the signals took the burst
        # Replies go in order: what came before them was held, and is read without waiting.
        refused = [m for m in await flooder.quiet(0) if m.get("code") == 42900]
        assert len(refused) >= 500 - 20 - 5
        assert (await reader.request("ping"))["action"] == "pong"  # not closed
        seen = [m for m in await reader.quiet(0) if m["action"] == "signal"]
        assert 0 < len(seen) <= 30
        assert (await flooder.request("publish", channel="room:typing", data=1))["serial"] == 1
        for c in (reader, flooder):
            await c.close()


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


def rss_kb(pid: int) -> int:
    """The resident memory of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


BUDGET_KB = 1024  # ROOMCAST_OUTBOUND_BYTES of the server below
CONSTANT_KB = 64 * 1024  # allocator arenas, the store's page cache, interpreter caches


@pytest.fixture(scope="module")
def budget_server(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    env = {**test_env, "ROOMCAST_OUTBOUND_BYTES": str(BUDGET_KB * 1024)}
    with ServerProcess(env=env) as proc:
        yield proc


async def fill_page(url: str, channel: str) -> int:
    """1000 messages of 2 KB on ``channel``; the size of one history page of them, in KiB."""
    writer = await WireClient.connect(url, client_id="filler")
    for start in range(0, 1000, 50):
        await writer.send(
            [
                {"action": "publish", "channel": channel, "data": [k, "x" * 2000]}
                for k in range(start, start + 50)
            ]
        )
    await writer.request("ping", timeout=30)  # replies in order: every publish is stored
    page = await writer.request("history", channel=channel, limit=1000, timeout=30)
    await writer.close()
    return len(json.dumps(page)) // 1024


async def stuck_clients(url: str, channel: str, count: int) -> list[ClientConnection]:
    """Clients that each ask for 100 history pages, then never read."""
    asks = [
        {"action": "history", "channel": channel, "limit": 1000, "ref": ref}
        for ref in range(1, 101)
    ]
    clients = []
    for k in range(count):
        ws = await ws_connect(f"{url}?client_id=stuck{k}", max_queue=1, max_size=None)
        await ws.send(json.dumps(asks))
        clients.append(ws)
    return clients


async def peak_until_steady(pid: int, bound_kb: int) -> int:
    """The server's peak RSS until it holds steady for a second (at most 15 s); fails as
    soon as it passes ``bound_kb``."""
    loop = asyncio.get_running_loop()
    peak, steady_since, deadline = 0, loop.time(), loop.time() + 15
    while loop.time() - steady_since < 1.0 and loop.time() < deadline:
        rss = rss_kb(pid)
        assert rss <= bound_kb, f"RSS {rss} KiB is over the bound {bound_kb} KiB"
        if rss > peak + 1024:
            steady_since = loop.time()
        peak = max(peak, rss)
        await asyncio.sleep(0.05)
    return peak


async def settles_back(pid: int, near_kb: int) -> int:
    """The server's RSS once it is back under ``near_kb`` (at most 20 s)."""
    for _ in range(200):
        if rss_kb(pid) <= near_kb:
            break
        await asyncio.sleep(0.1)
    return rss_kb(pid)


@pytest.mark.parametrize("count", [1, 20])
async def test_clients_that_never_read_hold_at_most_their_outbound_budget(
    budget_server: ServerProcess, count: int
) -> None:
    """Clients that ask for 100 history pages each (about 2 MiB a page) and never read.

    Each may make the server hold: its queue up to ``outbound_bytes``, one reply over it,
    the reply written to its socket, and the page being read and encoded: the budget and
    three pages. Over that, a constant for what a busy server keeps (allocator arenas, the
    store's cache): 64 MiB. Without the budget one such client grew the server by 200 MiB
    within a second, and kept growing. Once they are gone the server is back within a
    third of the growth plus 16 MiB of where it started: glibc keeps some freed memory in
    its arenas (measured: a quarter of the growth for 20 clients, the same after repeated
    runs, so not a leak; bench/replies.py, docs/benchmarks.md).
    """
    assert budget_server.proc is not None
    pid = budget_server.proc.pid
    channel = f"room:budget{count}"
    page_kb = await fill_page(budget_server.ws_url, channel)
    start = rss_kb(pid)
    bound = start + count * (BUDGET_KB + 3 * page_kb) + CONSTANT_KB
    clients = await stuck_clients(budget_server.ws_url, channel, count)
    peak = await peak_until_steady(pid, bound)
    for ws in clients:
        ws.transport.abort()  # a close handshake would wait behind the unread replies
    near = start + (peak - start) // 3 + 16 * 1024
    after = await settles_back(pid, near)
    assert after <= near, (start, peak, after)
