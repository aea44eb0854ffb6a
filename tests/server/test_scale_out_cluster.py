"""Two ``roomcast serve`` nodes on a Redis Cluster of three masters (``--store
redis+cluster://...``) act as one service, with channels spread over every master: publish,
history, resume on the other node, presence (and a killed node's members leaving), claims and
live objects. A ``redis://`` URL naming one of the cluster's nodes refuses to start.

The test starts its own cluster (``tests/redis_cluster.py``); without ``redis-server`` and
``redis-cli`` it fails, it never skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterator

import pytest

from polling import eventually
from redis_cluster import drop_cluster_prefix, masters_of, redis_cluster
from roomcast.testing import Msg, RedisClusterProcesses, ServerProcess, WireClient

CHANNELS = 30


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as started:
        yield started


@pytest.fixture
def prefix(cluster: RedisClusterProcesses) -> Iterator[str]:
    """A key prefix of this test's own, deleted after it."""
    name = f"test-{uuid.uuid4().hex}"
    yield name
    drop_cluster_prefix(cluster, name)


@pytest.fixture
def two_nodes(
    cluster: RedisClusterProcesses, prefix: str, test_env: dict[str, str]
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    # Anonymous clients may claim here (lock:* keys): the claim test runs on both nodes.
    # The heartbeat stays at its default: it is the WebSocket ping timeout too, and a
    # deadline of one second is missed on a loaded machine while a master restarts.
    capability = '{"*": ["*", "claim"]}'
    env = {**test_env, "ROOMCAST_ANONYMOUS_CAPABILITY": capability}
    a = ServerProcess(store=cluster.url(prefix=prefix), env=env)
    b = ServerProcess(store=cluster.url(prefix=prefix), env=env)
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def channels(cluster: RedisClusterProcesses, prefix: str) -> list[str]:
    """Channels whose slots are on every master of the cluster."""
    names = [f"room:{uuid.uuid4().hex[:8]}:{i}" for i in range(CHANNELS)]
    assert masters_of(cluster, [f"{prefix}:{{{n}}}:head" for n in names]) == set(cluster.ports)
    return names


async def test_publish_history_and_resume_on_the_other_node_on_every_master(
    two_nodes: tuple[ServerProcess, ServerProcess], channels: list[str]
) -> None:
    a, b = two_nodes
    reader = await WireClient.connect(a.ws_url, client_id="reader")
    writer = await WireClient.connect(b.ws_url, client_id="writer")
    epochs = {ch: (await reader.request("attach", channel=ch))["epoch"] for ch in channels}
    for i in range(3):
        for ch in channels:
            ok = await writer.request("publish", channel=ch, data=f"{ch}/{i}")
            assert (ok["action"], ok["serial"]) == ("ok", i + 1)
    for ch in channels:
        events = await reader.events(ch, 3)
        assert [(e["serial"], e["data"]) for e in events] == [
            (i + 1, f"{ch}/{i}") for i in range(3)
        ]
        history = await reader.request("history", channel=ch)
        assert [m["data"] for m in history["messages"]] == [f"{ch}/{i}" for i in range(3)]

    reader.drop()
    for ch in channels:  # published while the reader is away
        await writer.request("publish", channel=ch, data=f"{ch}/away")
    again = await WireClient.connect(
        b.ws_url, client_id="reader", resume=reader.connected["resume_key"]
    )
    assert again.connected["resumed"] is True
    for ch in channels:
        back = await again.request("attach", channel=ch, from_serial=3, epoch=epochs[ch])
        assert (back["resumed"], back["epoch"]) == (True, epochs[ch])
    for ch in channels:
        await writer.request("publish", channel=ch, data=f"{ch}/live")
    for ch in channels:
        events = await again.events(ch, 2)
        assert [(e["serial"], e["data"]) for e in events] == [(4, f"{ch}/away"), (5, f"{ch}/live")]
    assert not [m for m in await again.quiet(0.3) if m["action"] == "event"]
    await writer.close()
    await again.close()


async def test_presence_crosses_nodes_and_a_killed_nodes_members_leave_on_every_master(
    two_nodes: tuple[ServerProcess, ServerProcess], channels: list[str]
) -> None:
    a, b = two_nodes
    watcher = await WireClient.connect(b.ws_url, client_id="watcher")
    alice = await WireClient.connect(a.ws_url, client_id="alice")
    for ch in channels:
        await watcher.request("attach", channel=ch)
        await alice.request("attach", channel=ch)
        await alice.request("presence", channel=ch, op="enter", data={"on": ch})

    def presence(op: str) -> Callable[[Msg], bool]:
        return lambda m: m["action"] == "presence" and m["op"] == op

    entered = [await watcher.next(presence("enter")) for _ in channels]
    assert sorted(m["channel"] for m in entered) == sorted(channels)
    assert all(m["data"] == {"on": m["channel"]} for m in entered)
    late = await WireClient.connect(b.ws_url, client_id="carol")
    for ch in channels:
        members = (await late.request("attach", channel=ch))["presence"]
        assert [(m["client_id"], m["data"]) for m in members] == [("alice", {"on": ch})]

    a.kill()  # SIGKILL: node a cannot say goodbye; node b reaps its members on every slot
    left = [await watcher.next(presence("leave"), timeout=30) for _ in channels]
    assert sorted(m["channel"] for m in left) == sorted(channels)
    for ch in channels:
        assert (await late.request("attach", channel=ch))["presence"] == []
    await watcher.close()
    await late.close()


async def test_claims_and_live_objects_across_nodes_on_every_master(
    two_nodes: tuple[ServerProcess, ServerProcess], channels: list[str]
) -> None:
    a, b = two_nodes
    on_a = await WireClient.connect(a.ws_url, client_id="worker")
    on_b = await WireClient.connect(b.ws_url, client_id="worker")
    for ch in channels:
        replies = await asyncio.gather(
            on_a.request("claim", channel=ch, key="lock:1", ttl_s=30),
            on_b.request("claim", channel=ch, key="lock:1", ttl_s=30),
        )
        assert sorted(r["granted"] for r in replies) == [False, True]  # exactly one

    for ch in channels:
        ok = await on_a.request("object", channel=ch, op={"type": "counter.create"})
        inc = {"type": "counter.inc", "object_id": ok["object_id"], "amount": 2}
        assert (await on_b.request("object", channel=ch, op=inc))["serial"] == 2
        attached = await on_b.request("attach", channel=ch)
        assert attached["objects"]["serial"] == 2
        assert attached["objects"]["objects"][ok["object_id"]] == {"type": "counter", "value": 2}
    await on_a.close()
    await on_b.close()


async def test_a_master_restarted_without_its_data_gets_the_nodes_members_back(
    cluster: RedisClusterProcesses,
    prefix: str,
    two_nodes: tuple[ServerProcess, ServerProcess],
    channels: list[str],
) -> None:
    a, b = two_nodes
    alice = await WireClient.connect(a.ws_url, client_id="alice")
    for ch in channels:
        await alice.request("attach", channel=ch)
        await alice.request("presence", channel=ch, op="enter", data={"on": ch})
    # A master other than the one that holds <prefix>:lifetime: the nodes must notice that
    # a part of the data was lost too.
    lifetime_master = masters_of(cluster, [f"{prefix}:lifetime"]).pop()
    port = next(p for p in cluster.ports if p != lifetime_master)
    on_it = [ch for ch in channels if masters_of(cluster, [f"{prefix}:{{{ch}}}:head"]) == {port}]
    assert on_it

    # Its channels' logs and presence hashes are gone. (In a thread: the clients here
    # answer the server's pings meanwhile.)
    await asyncio.to_thread(cluster.restart, port)

    # Node a puts alice's session and members back, then closes her connection (1012) so
    # that she attaches again; she resumes, as the SDK does, on the other node.
    await asyncio.wait_for(alice.closed.wait(), 30)
    assert alice.close_code == 1012
    assert "the store's data was reset" in a.output()
    # Node b notices on its own tick, then has its subscribers attach again: wait for it, so
    # that the watcher below is not told to attach once more.
    await eventually(lambda: "the store's data was reset" in b.output(), what="node b's look")
    again = await WireClient.connect(
        b.ws_url, client_id="alice", resume=alice.connected["resume_key"]
    )
    assert again.connected["resumed"] is True
    watcher = await WireClient.connect(b.ws_url, client_id="watcher")
    for ch in channels:
        members = (await watcher.request("attach", channel=ch))["presence"]
        assert [(m["client_id"], m["data"]) for m in members] == [("alice", {"on": ch})]
    await again.close()
    await watcher.close()


def test_a_redis_url_naming_a_cluster_node_refuses_to_start(
    cluster: RedisClusterProcesses, test_env: dict[str, str]
) -> None:
    node = ServerProcess(store=f"redis://127.0.0.1:{cluster.ports[0]}/0", env=test_env)
    with contextlib.closing(node), pytest.raises(RuntimeError) as refused:
        node.start()
    text = str(refused.value)
    assert "server exited with 3" in text
    assert "cannot open the store" in text and "redis+cluster://" in text
