"""Failures of a multi-node ``redis://`` deployment: a node killed with ``kill -9`` while its
clients stream and publish, Redis flushed under running nodes, and Redis stopped and started
again (without persistence, so it comes back empty).

The tests that stop or flush Redis run a ``redis-server`` of their own on a free port; the
others use the test Redis at ``REDIS_URL`` with a key prefix of their own (the fixtures of
``test_scale_out``). Without ``redis-server`` or that Redis they fail, they never skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_scale_out import room, store_url  # noqa: F401  (store_url is a fixture)

from redis_servers import RedisServer
from roomcast.client import connect
from roomcast.testing import ServerProcess, WireClient

Msg = dict[str, Any]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def node_env(test_env: dict[str, str], **more: str) -> dict[str, str]:
    return {**test_env, "ROOMCAST_HEARTBEAT_S": "1", **more}


def events_of(messages: list[Msg], channel: str) -> list[Msg]:
    return [m for m in messages if m["action"] == "event" and m["channel"] == channel]


async def until(check: Any, within: float, every: float = 0.1) -> Any:
    """Wait for ``check()`` (sync or async) to return something true; returns it."""
    async with asyncio.timeout(within):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(every)


# ----------------------------------------------------------------------------- kill -9


async def test_a_killed_nodes_clients_resume_elsewhere_and_lose_nothing_acknowledged(
    store_url: str,  # noqa: F811
    test_env: dict[str, str],
) -> None:
    env = node_env(test_env, ROOMCAST_STREAM_IDLE_TIMEOUT_S="2")
    a, b = ServerProcess(store=store_url, env=env), ServerProcess(store=store_url, env=env)
    try:
        a.start()
        b.start()
        channel = room()
        watcher = await WireClient.connect(b.ws_url, client_id="watcher")
        await watcher.request("attach", channel=channel)
        # On node a: a raw client that is present and publishes, and an SDK client streaming.
        pub = await WireClient.connect(a.ws_url, client_id="pub")
        attached = await pub.request("attach", channel=channel)
        await pub.request("presence", channel=channel, op="enter", data={"busy": True})
        entered = await watcher.next(lambda m: m["action"] == "presence", timeout=10)
        assert (entered["op"], entered["client_id"]) == ("enter", "pub")
        streamer = await connect(a.url, client_id="streamer")
        stream = streamer.channels.get(channel).stream()
        stream_serial = await stream.start()

        acked: list[tuple[int, str]] = []  # (serial, data) of every publish acknowledged
        acked_text = ""  # what the stream's acknowledged fragments add up to

        async def publish_forever() -> None:
            for i in range(100_000):
                ok = await pub.request("publish", channel=channel, data=f"m{i}", timeout=60)
                assert ok["action"] == "ok", ok
                acked.append((ok["serial"], f"m{i}"))

        async def stream_forever() -> None:
            nonlocal acked_text
            text = ""
            for i in range(100_000):
                fragment = f"t{i} "
                await stream.append(fragment)
                text += fragment
                if i % 5 == 4:
                    await stream.flush()
                    acked_text = text
                await asyncio.sleep(0.005)

        tasks = [asyncio.create_task(publish_forever()), asyncio.create_task(stream_forever())]
        await until(lambda: len(acked) >= 50 and len(acked_text) > 100, within=30)
        killed_at = asyncio.get_running_loop().time()
        a.kill()  # SIGKILL, mid-stream and mid-publish
        await asyncio.sleep(0.3)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(streamer.close(), 5)
        assert acked and acked_text

        # The publisher reconnects to node b and resumes from the last event it received.
        seen = events_of(await pub.quiet(0), channel)
        last = seen[-1]["serial"] if seen else 0
        again = await WireClient.connect(
            b.ws_url, client_id="pub", resume=pub.connected["resume_key"]
        )
        # Its session was stored when it connected: even a node killed with -9 leaves it,
        # so the connection resumes as itself, and so does the channel: nothing is lost.
        assert again.connected["resumed"] is True
        assert again.connected["connection_id"] == pub.connected["connection_id"]
        back = await again.request(
            "attach", channel=channel, from_serial=last, epoch=attached["epoch"]
        )
        assert back["resumed"] is True
        replay = await again.events(channel, back["serial"] - last, timeout=30)
        got = seen + replay
        assert [e["serial"] for e in got] == list(range(1, back["serial"] + 1))
        by_serial = {e["serial"]: e for e in got}
        for serial, data in acked:
            assert by_serial[serial]["data"] == data
        # The watcher on b saw the same gap-free sequence live.
        live = await watcher.events(channel, back["serial"], timeout=30)
        assert [e["serial"] for e in live] == list(range(1, back["serial"] + 1))

        # The dead node's member leaves within the node TTL (max(grace, 5 s)) plus a tick.
        left = await watcher.next(lambda m: m["action"] == "presence", timeout=15)
        assert (left["op"], left["client_id"]) == ("leave", "pub")
        assert asyncio.get_running_loop().time() - killed_at < 9
        assert left["connection_id"] == pub.connected["connection_id"]

        # The abandoned stream ends `failed` (idle 2 s + the sweep), by node b's sweeper,
        # with every acknowledged fragment in it.
        async with connect(b.url, client_id="streamer") as reader:
            history = reader.channels.get(channel)

            async def ended() -> Any:
                async for page in history.history(limit=1000):
                    [message] = [m for m in page.messages if m.msg_serial == stream_serial]
                    return message if message.status != "streaming" else None
                return None

            message = await until(ended, within=20, every=0.3)
        assert message.status == "failed"
        assert message.extras["failure"] == "abandoned"
        assert message.data.startswith(acked_text)
        await again.close()
        await watcher.close()
    finally:
        a.close()
        b.close()


# ----------------------------------------------------------------------------- Redis flushed


async def test_after_redis_is_flushed_resumes_get_discontinuity_and_messages_flow_again(
    private_redis: RedisServer, test_env: dict[str, str]
) -> None:
    env = node_env(test_env)
    a = ServerProcess(store=private_redis.url, env=env)
    b = ServerProcess(store=private_redis.url, env=env)
    try:
        a.start()
        b.start()
        channel = room()
        reader = await WireClient.connect(a.ws_url, client_id="reader")
        attached = await reader.request("attach", channel=channel)
        stayer = await WireClient.connect(a.ws_url, client_id="stayer")
        await stayer.request("attach", channel=channel)
        writer = await WireClient.connect(b.ws_url, client_id="writer")
        for i in range(5):
            await writer.request("publish", channel=channel, data=f"old{i}")
        await reader.events(channel, 5)
        await stayer.events(channel, 5)
        reader.drop()
        await asyncio.sleep(0.5)  # node a has seen the drop (and stored a resume session)

        client = private_redis.client()
        client.flushall()
        client.close()
        # Node b notices on its next tick: it puts back what it holds and has its subscribers
        # attach again (1012). A client that came back to it before would be told to attach
        # once more; wait for it, so that `again` below comes back once.
        await until(lambda: "the store's data was reset" in b.output(), within=10, every=0.05)

        # A resume with the old epoch: the log it names is gone.
        again = await WireClient.connect(
            b.ws_url, client_id="reader", resume=reader.connected["resume_key"]
        )
        back = await again.request(
            "attach", channel=channel, from_serial=5, epoch=attached["epoch"]
        )
        assert back["resumed"] is False
        assert back["epoch"] != attached["epoch"]
        gap = await again.next(lambda m: m["action"] == "discontinuity")
        assert gap["channel"] == channel

        # New messages flow again, on both nodes, without a restart.
        ok = await writer.request("publish", channel=channel, data="new0")
        assert (ok["action"], ok["serial"]) == ("ok", 1)
        [event] = await again.events(channel, 1, timeout=15)
        assert (event["serial"], event["data"]) == (1, "new0")
        # Node a learns of the reset from that event (the channel's new log), or from its own
        # tick, whichever comes first. Either way it puts back what it holds, then closes its
        # subscriber, which holds serials of the old log, once (1012) to attach again; it
        # resumes, gets `discontinuity`, and then the new log's events.
        await asyncio.wait_for(stayer.closed.wait(), 15)
        assert stayer.close_code == 1012
        back_again = await WireClient.connect(
            a.ws_url, client_id="stayer", resume=stayer.connected["resume_key"]
        )
        reattached = await back_again.request(
            "attach", channel=channel, from_serial=5, epoch=attached["epoch"]
        )
        assert reattached["resumed"] is False
        assert (reattached["epoch"], reattached["serial"]) == (back["epoch"], 1)
        await back_again.next(lambda m: m["action"] == "discontinuity")
        ok = await back_again.request("publish", channel=channel, data="new1")
        assert (ok["action"], ok["serial"]) == ("ok", 2)
        for client_ in (again, back_again):
            [event] = await client_.events(channel, 1, timeout=15)
            assert (event["serial"], event["data"]) == (2, "new1")
            assert not [m for m in await client_.quiet(0.3) if m["action"] == "event"]
        fresh = await WireClient.connect(a.ws_url, client_id="fresh")
        assert (await fresh.request("attach", channel=channel))["serial"] == 2
        for c in (again, back_again, writer, fresh):
            await c.close()
    finally:
        a.close()
        b.close()


# ----------------------------------------------------------------------------- Redis down


def complaints(log: str) -> list[str]:
    return [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]


async def test_while_redis_is_down_the_node_says_so_refuses_writes_and_recovers(
    tmp_path: Path, test_env: dict[str, str]
) -> None:
    password = "s3cret-" + uuid.uuid4().hex
    private_redis = RedisServer(tmp_path, password=password)
    private_redis.start()
    env = node_env(test_env, ROOMCAST_STREAM_IDLE_TIMEOUT_S="1")
    node = ServerProcess(store=private_redis.url, env=env)
    where = f"127.0.0.1:{private_redis.port}"
    try:
        node.start()
        channel = room()
        subscriber = await WireClient.connect(node.ws_url, client_id="sub")
        attached = await subscriber.request("attach", channel=channel)
        writer = await WireClient.connect(node.ws_url, client_id="writer")
        assert (await writer.request("publish", channel=channel, data="before"))["serial"] == 1
        await subscriber.events(channel, 1)
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            assert (await http.get("/readyz")).status_code == 200
            before = len(node.output())

            private_redis.stop()
            down = await http.get("/readyz")
            assert down.status_code == 503
            assert down.json()["status"] == "unavailable"
            assert where in down.json()["reason"]
            refused = await writer.request("publish", channel=channel, data="lost", timeout=20)
            assert refused["action"] == "error" and refused["code"] == 50300, refused
            assert f"the Redis store at {where}" in refused["message"], refused
            assert password not in refused["message"] + down.json()["reason"]
            await asyncio.sleep(6)  # many ticks, sweeps and bus reads fail meanwhile
            again = await writer.request("publish", channel=channel, data="lost", timeout=20)
            assert again["action"] == "error" and again["code"] == 50300, again
            # The log says so once (the store, and the bus's pub/sub connection), not once
            # per tick, sweep or request; and never with the password.
            while_down = node.output()[before:]
            said = complaints(while_down)
            assert any(f"the Redis store at {where} is unreachable" in x for x in said), said
            assert len(said) <= 3, while_down
            assert "Traceback" not in while_down, while_down
            assert subscriber.close_code is None  # clients stay connected meanwhile

            private_redis.start()  # empty: no persistence
            assert await until(lambda: _ready(http), within=20, every=0.25)
        # Writes work again, without a restart of the node.
        ok = await until(lambda: _publish(writer, channel, "after"), within=20, every=0.5)
        assert ok["serial"] == 1  # a new log: Redis came back empty
        # The subscriber from before the outage holds serials of the old log: it is closed
        # (1012), resumes, gets `discontinuity` and then the new messages.
        await asyncio.wait_for(subscriber.closed.wait(), 15)
        assert subscriber.close_code == 1012
        back = await WireClient.connect(
            node.ws_url, client_id="sub", resume=subscriber.connected["resume_key"]
        )
        reattached = await back.request(
            "attach", channel=channel, from_serial=1, epoch=attached["epoch"]
        )
        assert reattached["resumed"] is False and reattached["serial"] == 1
        await back.next(lambda m: m["action"] == "discontinuity")
        await writer.request("publish", channel=channel, data="later")
        [event] = await back.events(channel, 1, timeout=15)
        assert (event["serial"], event["data"]) == (2, "later")
        after = node.output()[before:]
        assert f"the Redis store at {where} is reachable again" in after, after
        assert password not in node.output()
        await back.close()
        await writer.close()
    finally:
        node.close()
        private_redis.stop()


async def _ready(http: httpx.AsyncClient) -> bool:
    return (await http.get("/readyz")).status_code == 200


async def _publish(client: WireClient, channel: str, data: str) -> Msg | None:
    reply = await client.request("publish", channel=channel, data=data, timeout=20)
    return reply if reply["action"] == "ok" else None


# ----------------------------------------------------------------------------- bursts


async def test_hundreds_of_clients_dropping_at_once_all_keep_their_resume_sessions(
    store_url: str,  # noqa: F811
    test_env: dict[str, str],
) -> None:
    # Each dropped connection stores its resume session in Redis at once: a burst of
    # hundreds of requests must wait for the node's Redis connections, not fail.
    count = 250
    with ServerProcess(store=store_url, env=node_env(test_env)) as node:
        clients = [await WireClient.connect(node.ws_url, client_id=f"c{i}") for i in range(count)]
        for client in clients:
            client.drop()
        await asyncio.sleep(3)
        log = node.output()
        assert "Traceback" not in log and "Too many connections" not in log, log[-3000:]
        for i, client in enumerate(clients):
            again = await WireClient.connect(
                node.ws_url, client_id=f"c{i}", resume=client.connected["resume_key"]
            )
            assert again.connected["resumed"] is True, i
            assert again.connected["connection_id"] == client.connected["connection_id"]
            await again.close()
