"""Several ``roomcast serve`` processes on one Redis (``--store redis://...``) act as one
service: what a client does on one node is seen on the others in one gap-free order, a client
may resume on any of them, when a node dies the others make its members leave, and agent
workers connected to different nodes answer each trigger once.

They use the test Redis at ``REDIS_URL`` (default redis://127.0.0.1:6379/0) with a key prefix
of their own; without it they fail, they never skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roomcast.client import Channel, Message, connect
from roomcast.testing import AgentsProcess, ServerProcess, WireClient

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def store_url(redis_store: str) -> str:
    """A redis:// store URL with a prefix of this test's own (``redis_store`` of
    tests/conftest.py), by the name the scale-out tests use."""
    return redis_store


@contextlib.contextmanager
def running_nodes(
    store_url: str, test_env: dict[str, str], count: int
) -> Iterator[tuple[ServerProcess, ...]]:
    """``count`` servers on one store, with a short node heartbeat; stopped after."""
    env = {**test_env, "ROOMCAST_HEARTBEAT_S": "1"}
    nodes = tuple(ServerProcess(store=store_url, env=env) for _ in range(count))
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.close()


@pytest.fixture
def two_nodes(store_url: str, test_env: dict[str, str]) -> Iterator[tuple[ServerProcess, ...]]:
    with running_nodes(store_url, test_env, 2) as nodes:
        yield nodes


@pytest.fixture
def three_nodes(store_url: str, test_env: dict[str, str]) -> Iterator[tuple[ServerProcess, ...]]:
    with running_nodes(store_url, test_env, 3) as nodes:
        yield nodes


def room() -> str:
    return f"room:{uuid.uuid4().hex[:12]}"


async def alice_present_on_a(
    a: ServerProcess, b: ServerProcess, channel: str, mood: str
) -> tuple[WireClient, WireClient, dict[str, Any], dict[str, Any]]:
    """A watcher attached on B, and alice attached and present on A; returns both, alice's
    ``attached`` and the ``enter`` the watcher saw."""
    watcher = await WireClient.connect(b.ws_url, client_id="watcher")
    await watcher.request("attach", channel=channel)
    alice = await WireClient.connect(a.ws_url, client_id="alice")
    attached = await alice.request("attach", channel=channel)
    await alice.request("presence", channel=channel, op="enter", data={"mood": mood})
    entered = await watcher.next(lambda m: m["action"] == "presence" and m["op"] == "enter")
    return watcher, alice, attached, entered


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
    watcher, alice, _, entered = await alice_present_on_a(a, b, channel, "hungry")
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
    watcher, alice, _, _ = await alice_present_on_a(a, b, channel, "hungry")
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


async def test_a_resume_on_the_other_node_wins_whichever_node_notices_the_drop_first(
    two_nodes: tuple[ServerProcess, ...],
) -> None:
    a, b = two_nodes
    channel = room()
    watcher, alice, _, _ = await alice_present_on_a(a, b, channel, "quick")
    # Her connection to A is still open: A has noticed nothing when she resumes on B.
    again = await WireClient.connect(
        b.ws_url, client_id="alice", resume=alice.connected["resume_key"]
    )
    assert again.connected["resumed"] is True
    assert again.connected["connection_id"] == alice.connected["connection_id"]
    alice.drop()  # now A notices the drop; B holds her presence, so A must not end it
    await asyncio.sleep(3.5)  # past A's grace (2 s)
    assert not [m for m in await watcher.quiet(0.3) if m["action"] == "presence"]
    members = (await watcher.request("attach", channel=channel))["presence"]
    assert [(m["client_id"], m["data"]) for m in members] == [("alice", {"mood": "quick"})]
    # The key worked once: a second resume with it is a new connection.
    third = await WireClient.connect(
        a.ws_url, client_id="alice", resume=alice.connected["resume_key"]
    )
    assert third.connected["resumed"] is False
    await third.close()
    await again.close()
    await watcher.close()


async def test_three_nodes_deliver_one_gap_free_order_to_every_client(
    three_nodes: tuple[ServerProcess, ...],
) -> None:
    channel = room()
    clients = [
        await WireClient.connect(node.ws_url, client_id=f"c{n}{i}")
        for n, node in enumerate(three_nodes)
        for i in range(2)
    ]
    for client in clients:
        await client.request("attach", channel=channel)
    # Every client publishes at once, pipelined: six writers on three nodes race for serials.
    per_client = 40
    acked = await asyncio.gather(
        *(publish_many(client, channel, f"{i}-", per_client) for i, client in enumerate(clients))
    )
    total = per_client * len(clients)
    assert sorted(s for serials in acked for s in serials) == list(range(1, total + 1))
    orders = []
    for client in clients:
        events = await client.events(channel, total, timeout=30)
        assert [e["serial"] for e in events] == list(range(1, total + 1))
        orders.append([(e["serial"], e["data"]) for e in events])
        assert not [m for m in await client.quiet(0.2) if m["action"] == "event"]
    assert all(order == orders[0] for order in orders)  # the same order everywhere
    # ...and each publisher's messages in the order it sent them.
    for i in range(len(clients)):
        mine = [data for _, data in orders[0] if data.startswith(f"{i}-")]
        assert mine == [f"{i}-{k}" for k in range(per_client)]
    for client in clients:
        await client.close()


async def test_a_client_resumes_on_another_node_after_a_thousand_missed_messages(
    three_nodes: tuple[ServerProcess, ...],
) -> None:
    a, b, c = three_nodes
    channel = room()
    reader = await WireClient.connect(a.ws_url, client_id="reader")
    attached = await reader.request("attach", channel=channel)
    writer = await WireClient.connect(b.ws_url, client_id="writer")
    await publish_many(writer, channel, "before", 10)
    seen = await reader.events(channel, 10)
    reader.drop()
    missed = await publish_many(writer, channel, "missed", 1000)
    assert missed == list(range(11, 1011))

    again = await WireClient.connect(
        c.ws_url, client_id="reader", resume=reader.connected["resume_key"]
    )
    assert again.connected["resumed"] is True
    back = await again.request(
        "attach", channel=channel, from_serial=seen[-1]["serial"], epoch=attached["epoch"]
    )
    assert back["resumed"] is True and back["serial"] == 1010
    replay = await again.events(channel, 1000, timeout=30)
    assert [e["serial"] for e in replay] == missed
    assert [e["data"] for e in replay] == [f"missed{i}" for i in range(1000)]
    await writer.request("publish", channel=channel, data="live")
    [live] = await again.events(channel, 1)
    assert (live["serial"], live["data"]) == (1011, "live")
    assert not [m for m in await again.quiet(0.3) if m["action"] == "event"]  # exactly those
    await writer.close()
    await again.close()


# ----------------------------------------------------------------------------- agent workers

WORKER_KEY = "workers:" + "w" * 32

AGENTS = """
    [[agents]]
    name = "helper"
    provider = "scripted"
    model = "scripted"
    rooms = ["room:*"]
    policy = "mention"
    script = "{script}"
"""

SCRIPT = """
    delay_ms = 5

    [[replies]]
    text = "Sounds good to me."
"""


def is_answer(message: Message) -> bool:
    return message.name == "text" and isinstance(message.extras.get("agent"), dict)


async def history(url: str, channel: str) -> list[Message]:
    async with connect(url, client_id="reader") as client:
        async for page in client.channels.get(channel).history(limit=1000):
            return page.messages
    return []


async def helpers_present(channel: Channel) -> int:
    """The connections of the agent ``helper`` in ``channel``'s presence."""
    return len([m for m in await channel.presence.members() if m.client_id == "helper"])


async def test_workers_on_different_nodes_answer_each_trigger_exactly_once(
    store_url: str, test_env: dict[str, str], tmp_path: Path
) -> None:
    script = tmp_path / "script.toml"
    script.write_text(textwrap.dedent(SCRIPT))
    agents = tmp_path / "agents.toml"
    agents.write_text(textwrap.dedent(AGENTS).replace("{script}", str(script)))
    env = {
        **test_env,
        "ROOMCAST_KEYS": WORKER_KEY,
        "ROOMCAST_ALLOW_ANONYMOUS": "true",
        "ROOMCAST_STREAM_IDLE_TIMEOUT_S": "5",
    }
    nodes = [ServerProcess(store=store_url, env=env, args=["--agents", "none"]) for _ in range(2)]
    workers: list[AgentsProcess] = []
    try:
        for node in nodes:
            node.start()
        workers = [AgentsProcess(node.url, agents, WORKER_KEY).start() for node in nodes]
        channel = room()
        async with connect(nodes[0].url, client_id="alice") as alice:
            lunch = alice.channels.get(channel)
            # Both workers attach the new room (they are present in it) before the questions:
            # each then answers what it claims first.
            await lunch.publish("hello")
            async with asyncio.timeout(30):
                while await helpers_present(lunch) < 2:  # noqa: ASYNC110 - a member list
                    await asyncio.sleep(0.1)
            triggers = [await lunch.publish(f"@helper question {i}") for i in range(50)]
        async with asyncio.timeout(90):
            while True:
                messages = await history(nodes[1].url, channel)
                replies = [m for m in messages if is_answer(m)]
                if len(replies) >= 50 and all(m.status != "streaming" for m in messages):
                    break
                await asyncio.sleep(0.3)
        await asyncio.sleep(2.0)  # a duplicate would have shown up by now
        replies = [m for m in await history(nodes[1].url, channel) if is_answer(m)]
        assert sorted(r.extras["reply_to"] for r in replies) == triggers
        assert all(r.status == "complete" for r in replies)
        # Both workers took part (each answers what it claims first).
        outputs = [worker.output() for worker in workers]
        assert all(f"answers {channel}" in out for out in outputs), outputs
    finally:
        for worker in workers:
            worker.close()
        for node in nodes:
            node.close()


async def test_clients_of_a_stopped_node_resume_on_another_as_the_same_connection(
    two_nodes: tuple[ServerProcess, ...],
) -> None:
    a, b = two_nodes
    channel = room()
    watcher, alice, attached, _ = await alice_present_on_a(a, b, channel, "calm")
    await alice.request("publish", channel=channel, data="before")
    [seen] = await alice.events(channel, 1)
    assert a.stop() == 0  # SIGTERM: the node closes its connections (1012) and stores them
    await asyncio.wait_for(alice.closed.wait(), 10)
    assert alice.close_code == 1012
    await watcher.request("publish", channel=channel, data="while away")
    again = await WireClient.connect(
        b.ws_url, client_id="alice", resume=alice.connected["resume_key"]
    )
    assert again.connected["resumed"] is True
    assert again.connected["connection_id"] == alice.connected["connection_id"]
    back = await again.request(
        "attach", channel=channel, from_serial=seen["serial"], epoch=attached["epoch"]
    )
    assert back["resumed"] is True
    [missed] = await again.events(channel, 1)
    assert missed["data"] == "while away"
    # The server's 1012 is not a goodbye from the client: alice resumed with her presence,
    # nobody saw her leave, and she stays after A's members would have been reaped.
    assert again.connected["connection_id"] == alice.connected["connection_id"]
    await asyncio.sleep(7)  # A's node ttl (5 s) and a tick of B's reaper
    assert not [m for m in await watcher.quiet(0.2) if m["action"] == "presence"]
    members = (await watcher.request("attach", channel=channel))["presence"]
    assert [(m["client_id"], m["data"]) for m in members] == [("alice", {"mood": "calm"})]
    await again.close()
    await watcher.close()


async def test_a_stopped_nodes_members_leave_once_its_ttl_lapses_unless_they_resume(
    two_nodes: tuple[ServerProcess, ...],
) -> None:
    a, b = two_nodes
    channel = room()
    watcher, alice, _, _ = await alice_present_on_a(a, b, channel, "gone")
    assert a.stop() == 0  # SIGTERM; alice never comes back
    left = await watcher.next(lambda m: m["action"] == "presence", timeout=15)
    assert (left["op"], left["client_id"]) == ("leave", "alice")
    assert (await watcher.request("attach", channel=channel))["presence"] == []
    await alice.close()
    await watcher.close()
