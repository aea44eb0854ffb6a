"""Two ``roomcast serve`` processes on one Redis (``--store redis://...``) act as one service:
what a client does on one node is seen on the other, a client may resume on either, and when
a node dies the other one makes its members leave.

They use the test Redis at ``REDIS_URL`` (default redis://127.0.0.1:6379/0) with a key prefix
of their own; without it they fail, they never skip.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from roomcast.testing import ServerProcess, WireClient

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def store_url() -> Iterator[str]:
    """A redis:// store URL with a prefix of this test's own, deleted after the test."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        pytest.fail(f"these tests need a Redis at {REDIS_URL} ({exc})", pytrace=False)
    prefix = f"test-{uuid.uuid4().hex}"
    yield f"{REDIS_URL}?prefix={prefix}"
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    client.close()


@pytest.fixture
def two_nodes(store_url: str, test_env: dict[str, str]) -> Iterator[tuple[ServerProcess, ...]]:
    env = {**test_env, "ROOMCAST_HEARTBEAT_S": "1"}
    a, b = ServerProcess(store=store_url, env=env), ServerProcess(store=store_url, env=env)
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.close()
        b.close()


def room() -> str:
    return f"room:{uuid.uuid4().hex[:12]}"


async def publish_many(client: WireClient, channel: str, tag: str, count: int) -> list[int]:
    """Pipelined publishes (all sent, then every ``ok`` read); their serials."""
    refs = [client.next_ref() for _ in range(count)]
    for i, ref in enumerate(refs):
        await client.send(
            {"action": "publish", "channel": channel, "data": f"{tag}{i}", "ref": ref}
        )
    serials = []
    for ref in refs:
        ok = await client.next(lambda m, r=ref: m.get("ref") == r and m["action"] != "event")
        serials.append(ok["serial"])
    return serials


async def test_a_publish_on_one_node_reaches_subscribers_on_the_other(
    two_nodes: tuple[ServerProcess, ...],
) -> None:
    a, b = two_nodes
    channel = room()
    on_a = await WireClient.connect(a.ws_url, client_id="alice")
    on_b = await WireClient.connect(b.ws_url, client_id="bob")
    await on_a.request("attach", channel=channel)
    await on_b.request("attach", channel=channel)
    first = await on_a.request("publish", channel=channel, data="from a")
    second = await on_b.request("publish", channel=channel, data="from b")
    assert (first["serial"], second["serial"]) == (1, 2)  # one sequence for both nodes
    for client in (on_a, on_b):
        events = await client.events(channel, 2)
        assert [(e["serial"], e["data"]) for e in events] == [(1, "from a"), (2, "from b")]
    # Both nodes publishing at once: every subscriber sees one gap-free sequence, in order.
    await asyncio.gather(publish_many(on_a, channel, "a", 30), publish_many(on_b, channel, "b", 30))
    for client in (on_a, on_b):
        events = await client.events(channel, 60)
        assert [e["serial"] for e in events] == list(range(3, 63))
        assert not [m for m in await client.quiet(0.3) if m["action"] == "event"]
    await on_a.close()
    await on_b.close()


async def test_a_client_dropped_from_one_node_resumes_on_the_other_missing_nothing(
    two_nodes: tuple[ServerProcess, ...],
) -> None:
    a, b = two_nodes
    channel = room()
    writer = await WireClient.connect(b.ws_url, client_id="writer")
    reader = await WireClient.connect(a.ws_url, client_id="reader")
    attached = await reader.request("attach", channel=channel)
    for i in range(5):
        await writer.request("publish", channel=channel, data=i)
    seen = [e["serial"] for e in await reader.events(channel, 5)]
    reader.drop()
    for i in range(5, 12):  # published while the reader is away
        await writer.request("publish", channel=channel, data=i)

    again = await WireClient.connect(
        b.ws_url, client_id="reader", resume=reader.connected["resume_key"]
    )
    assert again.connected["resumed"] is True
    assert again.connected["connection_id"] == reader.connected["connection_id"]
    back = await again.request(
        "attach", channel=channel, from_serial=seen[-1], epoch=attached["epoch"]
    )
    assert back["resumed"] is True and back["epoch"] == attached["epoch"]
    await writer.request("publish", channel=channel, data="live")
    rest = await again.events(channel, 8)
    assert seen + [e["serial"] for e in rest] == list(range(1, 14))
    assert [e["data"] for e in rest] == [*range(5, 12), "live"]
    await writer.close()
    await again.close()


async def test_presence_crosses_nodes_and_a_killed_nodes_members_leave(
    two_nodes: tuple[ServerProcess, ...],
) -> None:
    a, b = two_nodes
    channel = room()
    watcher = await WireClient.connect(b.ws_url, client_id="bob")
    await watcher.request("attach", channel=channel)
    alice = await WireClient.connect(a.ws_url, client_id="alice")
    await alice.request("attach", channel=channel)
    await alice.request("presence", channel=channel, op="enter", data={"mood": "hungry"})
    entered = await watcher.next(lambda m: m["action"] == "presence")
    assert (entered["op"], entered["client_id"], entered["data"]) == (
        "enter",
        "alice",
        {"mood": "hungry"},
    )
    late = await WireClient.connect(b.ws_url, client_id="carol")
    members = (await late.request("attach", channel=channel))["presence"]
    assert [(m["client_id"], m["connection_id"]) for m in members] == [
        ("alice", alice.connected["connection_id"])
    ]

    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    a.kill()  # SIGKILL: node a cannot say goodbye; node b reaps its members
    left = await watcher.next(lambda m: m["action"] == "presence", timeout=30)
    waited = loop.time() - killed_at
    assert (left["op"], left["client_id"]) == ("leave", "alice")
    assert waited < 9, waited  # the node TTL (max(grace, 5 s)) plus a tick or two
    assert (await late.request("attach", channel=room()))["presence"] == []
    members = (await watcher.request("attach", channel=channel))["presence"]
    assert members == []
    assert [m for m in await watcher.quiet(0.5) if m["action"] == "presence"] == []
    await watcher.close()
    await late.close()


async def test_presence_stays_when_a_client_resumes_on_the_other_node(
    two_nodes: tuple[ServerProcess, ...],
) -> None:
    a, b = two_nodes
    channel = room()
    watcher = await WireClient.connect(b.ws_url, client_id="watcher")
    await watcher.request("attach", channel=channel)
    alice = await WireClient.connect(a.ws_url, client_id="alice")
    await alice.request("attach", channel=channel)
    await alice.request("presence", channel=channel, op="enter", data={"mood": "hungry"})
    await watcher.next(lambda m: m["action"] == "presence" and m["op"] == "enter")
    alice.drop()  # TCP loss on A: A starts the grace period (2 s in these tests)
    again = await WireClient.connect(
        b.ws_url, client_id="alice", resume=alice.connected["resume_key"]
    )
    assert again.connected["resumed"] is True
    await asyncio.sleep(3.5)  # A's grace is over
    left = [m for m in await watcher.quiet(0.5) if m["action"] == "presence"]
    assert left == []  # no leave: she is still here, on B
    members = (await watcher.request("attach", channel=channel))["presence"]
    assert [(m["client_id"], m["data"]) for m in members] == [("alice", {"mood": "hungry"})]
    # A dies later: alice is held by B now, so she is not reaped with A's members.
    a.kill()
    await asyncio.sleep(7)
    members = (await watcher.request("attach", channel=channel))["presence"]
    assert [m["client_id"] for m in members] == ["alice"]
    await again.close()
    await watcher.close()
