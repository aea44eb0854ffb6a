"""What the ``redis+cluster://`` store promises: the ``redis://`` store's guarantees with a
channel's keys and pub/sub channel in its own slot, channels spread over every master.

The contract suite runs on the cluster too (conftest's ``cluster`` backend). Here two or
three stores on the session's three-master cluster play the nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from test_contract import Recorder, create, member

from redis_cluster import cluster_client, masters_of, redis_cluster
from roomcast.backends import BackendURLError, StoreOptions, open_backend, shown_url
from roomcast.backends.base import ResumeSession
from roomcast.backends.redis import parse_cluster_url
from roomcast.backends.redis_store import RedisStore
from roomcast.protocol.errors import Unavailable
from roomcast.protocol.messages import PresenceEvent, SignalEvent
from roomcast.testing import RedisClusterProcesses

CHANNELS = [f"room:{i}" for i in range(30)]


@pytest.fixture
async def nodes(cluster_url: str) -> AsyncIterator[Callable[[], Awaitable[RedisStore]]]:
    """Opens stores ("nodes"), bus included, with this test's prefix; closes them after."""
    opened: list[RedisStore] = []

    async def make() -> RedisStore:
        store = open_backend(cluster_url, StoreOptions())
        assert isinstance(store, RedisStore)
        await store.bus.open()
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in reversed(opened):
        await store.aclose()


def attach(store: RedisStore) -> Recorder:
    sink = Recorder()
    store.bus.bind(sink)
    return sink


async def eventually(check: Callable[[], bool], what: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_the_cluster_url_names_startup_nodes_and_a_prefix() -> None:
    target = parse_cluster_url("redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2,[::1]:7002?prefix=x")
    assert target.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002))
    assert (target.prefix, target.password, target.tls) == ("x", "s3cret", False)
    assert "s3cret" not in target.where and "10.0.0.2:6379" in target.where
    assert parse_cluster_url("rediss+cluster://h:1/0").tls
    assert shown_url("redis+cluster://:s3cret@h:1,h:2?prefix=x") == (
        "redis+cluster://:***@h:1,h:2?prefix=x"
    )
    for bad, says in [
        ("redis+cluster://", "host:port"),
        ("redis+cluster://h:1/2", "only database 0"),
        ("redis+cluster://h:1?db=2", "unknown parameter 'db'"),
        ("redis+cluster://h:99999", "bad port"),
        ("redis+cluster://:pw@h:1,,h:2", "host:port"),
    ]:
        with pytest.raises(BackendURLError, match=says):
            open_backend(bad)


def test_the_test_channels_are_spread_over_every_master(
    cluster_service: RedisClusterProcesses,
) -> None:
    keys = [f"test:{{{channel}}}:head" for channel in CHANNELS]
    assert masters_of(cluster_service, keys) == set(cluster_service.ports)


async def test_two_nodes_on_many_channels_get_gap_free_serials_delivered_in_order(
    nodes: Callable[[], Awaitable[RedisStore]],
) -> None:
    a, b = await nodes(), await nodes()
    seen_a, seen_b = attach(a), attach(b)
    for channel in CHANNELS:
        await a.bus.subscribe(channel)
        await b.bus.subscribe(channel)
    per_node = 10

    async def publish(store: RedisStore, who: str) -> None:
        for i in range(per_node):  # each round: one append per channel, all at once
            results = await asyncio.gather(
                *(store.append(create(ch, f"{who}{i}")) for ch in CHANNELS)
            )
            assert all(r.serial is not None for r in results)

    await asyncio.gather(publish(a, "a"), publish(b, "b"))
    total = 2 * per_node * len(CHANNELS)
    for seen in (seen_a, seen_b):
        await eventually(lambda s=seen: len(s.events) >= total, "every event on both nodes")
    for channel in CHANNELS:
        log = await b.read_events(channel, 0, 1000)
        assert [e.serial for e in log] == list(range(1, 2 * per_node + 1))
        for seen in (seen_a, seen_b):
            assert seen.serials(channel) == [e.serial for e in log]  # once each, in order
    listed = await a.list_channels("room:", 100)
    assert sorted(info.channel for info in listed) == sorted(CHANNELS)


async def test_history_objects_and_idempotency_keys_on_every_slot(
    nodes: Callable[[], Awaitable[RedisStore]],
) -> None:
    a, b = await nodes(), await nodes()
    for channel in CHANNELS:
        first = await a.append(create(channel, "one"), idempotency_key="k1")
        again = await b.append(create(channel, "one"), idempotency_key="k1")
        assert (first.serial, again.serial, again.duplicate) == (1, 1, True)
        await b.append(create(channel, "two"))
        messages, more = await b.history(channel, before=None, after=None, limit=10)
        assert ([m.data for m in messages], more) == (["one", "two"], False)
        snap = await a.snapshot(channel, from_serial=1, rewind=1, objects=True)
        assert snap.serial == 2 and [e.serial for e in snap.events or []] == [2]
        assert (await a.objects(channel)).serial == 2


async def test_presence_signals_and_reaping_across_slots(
    nodes: Callable[[], Awaitable[RedisStore]],
) -> None:
    a, b, c = await nodes(), await nodes(), await nodes()
    seen_b = attach(b)
    attach(a)
    await b.bus.subscribe(CHANNELS[0])
    enter = PresenceEvent(
        channel=CHANNELS[0], op="enter", client_id="alice", connection_id="c1", timestamp=1
    )
    await a.bus.publish_presence(enter)
    await a.bus.publish_signal(SignalEvent(channel=CHANNELS[0], client_id="alice", name="typing"))
    await eventually(lambda: bool(seen_b.presence and seen_b.signals), "presence on node b")
    assert seen_b.presence == [enter]

    await a.node_heartbeat("node-a", 0.3)
    await b.node_heartbeat("node-b", 60)
    await c.node_heartbeat("node-c", 60)
    for channel in CHANNELS:
        await a.presence_set(channel, member("alice", "c1"), "node-a")
        await b.presence_set(channel, member("bob", "c2"), "node-b")
    await asyncio.sleep(0.4)  # node a stops heartbeating: it died
    from_b, from_c = await asyncio.gather(b.reap_dead_nodes(), c.reap_dead_nodes())
    assert not (from_b and from_c)  # one survivor did it all
    assert sorted(ch for ch, _ in from_b + from_c) == sorted(CHANNELS)
    for channel in CHANNELS:
        assert [m.client_id for m in await c.presence_members(channel)] == ["bob"]


async def test_sessions_claims_counters_and_a_burst_of_requests(
    nodes: Callable[[], Awaitable[RedisStore]],
) -> None:
    a, b = await nodes(), await nodes()
    session = ResumeSession("alice", "c1", {CHANNELS[0]: None}, expires_at=time.time() + 60)
    # Far more requests at once than connections per master: they wait, none fails.
    await asyncio.gather(*(a.save_session(f"k{i}", session) for i in range(500)))
    taken = await asyncio.gather(*(b.take_session(f"k{i}") for i in range(500)))
    assert taken == [session] * 500
    # Pipelines across masters too (a presence set writes three slots).
    await asyncio.gather(
        *(a.presence_set(CHANNELS[i % 30], member(f"u{i}", f"c{i}"), "node-a") for i in range(300))
    )
    counts = await asyncio.gather(*(b.presence_members(ch) for ch in CHANNELS))
    assert sum(map(len, counts)) == 300
    wins = await asyncio.gather(a.claim("job", "node-a", 5), b.claim("job", "node-b", 5))
    assert sorted(wins) == [False, True]
    assert await a.incr_counter("n", 1, 5) + await b.incr_counter("n", 2, 5) == 4


async def test_a_lost_bus_connection_is_caught_up_from_the_log(
    nodes: Callable[[], Awaitable[RedisStore]], cluster_service: RedisClusterProcesses
) -> None:
    a, b = await nodes(), await nodes()
    seen = attach(b)
    for channel in CHANNELS:
        await b.bus.subscribe(channel)
    await asyncio.gather(*(a.append(create(ch, "first")) for ch in CHANNELS))
    await eventually(lambda: len(seen.events) == len(CHANNELS), "the first events")
    # Node b's pub/sub connections to every master drop; what is published meanwhile
    # never reaches it over pub/sub.
    for port in cluster_service.ports:
        cluster_service.ask(port, "CLIENT", "KILL", "TYPE", "pubsub")
    for i in range(5):
        await asyncio.gather(*(a.append(create(ch, i)) for ch in CHANNELS))
    await eventually(lambda: len(seen.events) >= 6 * len(CHANNELS), "the events missed")
    await asyncio.gather(*(a.append(create(ch, "last")) for ch in CHANNELS))
    await eventually(lambda: len(seen.events) >= 7 * len(CHANNELS), "the next live events")
    await asyncio.sleep(0.1)
    for channel in CHANNELS:
        assert seen.serials(channel) == list(range(1, 8))


async def test_drop_prefix_deletes_keys_on_every_master(
    nodes: Callable[[], Awaitable[RedisStore]], cluster_service: RedisClusterProcesses
) -> None:
    a = await nodes()
    await asyncio.gather(*(a.append(create(ch)) for ch in CHANNELS))
    assert await a.drop_prefix() >= 4 * len(CHANNELS)
    with contextlib.closing(cluster_client(cluster_service)) as client:
        assert list(client.scan_iter(match=f"{a.k.prefix}:*")) == []


async def test_a_redis_url_naming_a_cluster_node_is_refused(
    cluster_service: RedisClusterProcesses,
) -> None:
    store = open_backend(f"redis://127.0.0.1:{cluster_service.ports[0]}/0")
    try:
        with pytest.raises(BackendURLError, match=r"Redis Cluster: use redis\+cluster://"):
            await store.open()
    finally:
        await store.aclose()


async def test_a_master_restart_is_survived_with_a_new_epoch_on_its_channels(
    nodes: Callable[[], Awaitable[RedisStore]], cluster_service: RedisClusterProcesses
) -> None:
    a, b = await nodes(), await nodes()
    seen = attach(b)
    for channel in CHANNELS:
        await b.bus.subscribe(channel)
    await asyncio.gather(*(a.append(create(ch, "before")) for ch in CHANNELS))
    await eventually(lambda: len(seen.events) == len(CHANNELS), "the first events")

    def master(channel: str) -> int:
        return masters_of(cluster_service, [f"{a.k.prefix}:{{{channel}}}:head"]).pop()

    port = master(CHANNELS[0])
    reset = [ch for ch in CHANNELS if master(ch) == port]

    lifetime = await a.lifetime()
    assert await b.lifetime() == lifetime == await a.lifetime()  # one id, read by any node

    # No persistence: that master's channels are empty now.
    await asyncio.to_thread(cluster_service.restart, port)

    async def append_after(channel: str) -> int | None:
        deadline = time.monotonic() + 20
        while True:  # the nodes see the master again within a few retries
            try:
                return (await a.append(create(channel, "after"))).serial
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    serials = dict(zip(CHANNELS, await asyncio.gather(*map(append_after, CHANNELS)), strict=True))
    assert serials == {ch: 1 if ch in reset else 2 for ch in CHANNELS}  # a new log there
    # Whichever master it was, the nodes see that the store lost data (and put theirs back).
    assert await a.lifetime() != lifetime
    await eventually(lambda: len(seen.events) == 2 * len(CHANNELS), "the events after", 30)
    for channel in CHANNELS:
        assert seen.serials(channel) == ([1, 1] if channel in reset else [1, 2])
    deadline = time.monotonic() + 10
    while True:  # node b's bus reports itself whole again (/readyz)
        try:
            await b.ping()
            break
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_a_channel_whose_slot_moves_to_another_master_keeps_flowing(
    nodes: Callable[[], Awaitable[RedisStore]], cluster_service: RedisClusterProcesses
) -> None:
    a, b = await nodes(), await nodes()
    seen = attach(b)
    channel = CHANNELS[0]
    await b.bus.subscribe(channel)
    for i in range(3):
        await a.append(create(channel, i))
    await eventually(lambda: len(seen.events) == 3, "the first events")
    key = f"{a.k.prefix}:{{{channel}}}:head"
    owner = masters_of(cluster_service, [key]).pop()
    slot = int(cluster_service.ask(owner, "CLUSTER", "KEYSLOT", key))
    target = next(p for p in cluster_service.ports if p != owner)

    await asyncio.to_thread(cluster_service.move_slot, slot, target)  # a resharding
    assert masters_of(cluster_service, [key]) == {target}

    for i in range(3, 6):
        assert (await a.append(create(channel, i))).serial == i + 1
    await eventually(lambda: len(seen.events) >= 6, "the events after the move", 20)
    # Node b subscribes there, and later events come live (no catching up triggers them).
    await eventually(lambda: "ssub=1" in cluster_service.ask(target, "CLIENT", "LIST"), "b", 10)
    for i in range(6, 9):
        await a.append(create(channel, i))
    await eventually(lambda: len(seen.events) >= 9, "the live events", 5)
    await asyncio.sleep(0.2)
    assert seen.serials(channel) == list(range(1, 10))


async def test_a_replica_promoted_in_place_of_a_dead_master_takes_over(tmp_path: Path) -> None:
    args = ["--cluster-node-timeout", "1000"]  # a dead master is failed over within seconds
    with redis_cluster(tmp_path, replicas=1, args=args) as cluster:
        url = cluster.url(prefix="failover")
        a, b = open_backend(url), open_backend(url)
        assert isinstance(a, RedisStore) and isinstance(b, RedisStore)
        try:
            for store in (a, b):
                await store.bus.open()
                await store.open()
            seen = attach(b)
            for channel in CHANNELS:
                await b.bus.subscribe(channel)
            await asyncio.gather(*(a.append(create(ch, "before")) for ch in CHANNELS))
            await eventually(lambda: len(seen.events) == len(CHANNELS), "the first events")
            port = masters_of(cluster, [f"failover:{{{CHANNELS[0]}}}:head"]).pop()
            await asyncio.to_thread(cluster.wait_replicated, port)  # the replica has them

            await asyncio.to_thread(cluster.kill, port)

            async def append_after(channel: str) -> int | None:
                deadline = time.monotonic() + 30
                while True:  # refused until the replica is promoted and the nodes see it
                    try:
                        return (await a.append(create(channel, "after"))).serial
                    except Unavailable:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)

            serials = await asyncio.gather(*map(append_after, CHANNELS))
            assert serials == [2] * len(CHANNELS)  # nothing lost: the replica had it all
            await eventually(lambda: len(seen.events) == 2 * len(CHANNELS), "the events", 30)
            for channel in CHANNELS:
                assert seen.serials(channel) == [1, 2]
            # Node b follows on its own: later events come live from the new master.
            await asyncio.gather(*(a.append(create(ch, "later")) for ch in CHANNELS))
            await eventually(lambda: len(seen.events) == 3 * len(CHANNELS), "live events", 10)
            deadline = time.monotonic() + 15
            while True:  # node b's bus reports itself whole again (/readyz)
                try:
                    await b.ping()
                    break
                except Unavailable:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
        finally:
            await a.aclose()
            await b.aclose()
