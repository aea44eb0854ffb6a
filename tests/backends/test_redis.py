"""What only the ``redis://`` store promises: several nodes on one Redis.

The contract suite runs on Redis too (conftest). Here two or three stores on one Redis play
the nodes of a cluster. Tests that restart Redis or kill its connections run their own
``redis-server`` on a free port; the others use the shared test Redis with a key prefix of
their own.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis
from test_contract import Recorder, create, event, member

from roomcast.backends import BackendURLError, StoreOptions, open_backend
from roomcast.backends.redis_store import RedisStore
from roomcast.protocol.errors import Unavailable
from roomcast.protocol.messages import PresenceEvent, SignalEvent
from roomcast.testing import free_port

CH = "room:redis"


class OwnRedis:
    """A ``redis-server`` of the test's own, without persistence, that it may stop."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "no", "--dir", str(self.workdir)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def open_nodes() -> AsyncIterator[Callable[[str], Awaitable[RedisStore]]]:
    """Opens stores ("nodes"), bus included, on a Redis URL; closes them after the test."""
    opened: list[RedisStore] = []

    async def make(url: str) -> RedisStore:
        store = open_backend(url, StoreOptions())
        assert isinstance(store, RedisStore)
        await store.bus.open()
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in reversed(opened):
        await store.aclose()


@pytest.fixture
def nodes(
    redis_url: str, redis_prefix: str, open_nodes: Callable[[str], Awaitable[RedisStore]]
) -> Callable[..., object]:
    """Opens nodes on the shared test Redis, all with this test's prefix."""

    async def make(url: str = f"{redis_url}?prefix={redis_prefix}") -> RedisStore:
        return await open_nodes(url)

    return make


async def node(make: Callable[..., object], url: str | None = None) -> RedisStore:
    store = await make() if url is None else await make(url)  # type: ignore[operator]
    assert isinstance(store, RedisStore)
    return store


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


# --------------------------------------------------------------------------- URLs


def test_the_redis_url_selects_the_store_and_takes_a_prefix() -> None:
    store = open_backend("redis://127.0.0.1:6379/3?prefix=app1")
    assert isinstance(store, RedisStore)
    assert store.k.prefix == "app1" and store.url == "redis://127.0.0.1:6379/3"
    assert store.k.channel("a:b")[0] == "app1:{a:b}:head"  # one hash slot per channel
    assert isinstance(open_backend("redis://127.0.0.1:6379/0"), RedisStore)
    assert open_backend("redis://127.0.0.1:6379/0").k.prefix == "roomcast"  # type: ignore[attr-defined]
    with pytest.raises(BackendURLError, match="prefix"):
        open_backend("redis://127.0.0.1:6379/0?prefix=a{b}")


def test_an_unreachable_test_redis_fails_the_test_clearly(
    redis_check: Callable[[str], None],
) -> None:
    port = free_port()
    with pytest.raises(pytest.fail.Exception, match=f"need a Redis at redis://127.0.0.1:{port}"):
        redis_check(f"redis://127.0.0.1:{port}/0")


async def test_an_unreachable_redis_is_reported_clearly() -> None:
    port = free_port()
    store = open_backend(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
        await store.open()
    await store.aclose()


# --------------------------------------------------------------------------- two nodes


async def test_two_nodes_appending_to_one_channel_get_gap_free_serials_delivered_once_in_order(
    nodes: Callable[..., object],
) -> None:
    a, b = await node(nodes), await node(nodes)
    seen_a, seen_b = attach(a), attach(b)
    await a.bus.subscribe(CH)
    await b.bus.subscribe(CH)
    n = 400

    async def publish(store: RedisStore, who: str) -> list[int]:
        serials: list[int] = []
        for start in range(0, n, 50):  # bursts of concurrent appends, interleaved
            results = await asyncio.gather(
                *(store.append(create(CH, f"{who}{i}")) for i in range(start, start + 50))
            )
            burst = [r.serial for r in results]
            assert all(s is not None for s in burst)
            serials += [s for s in burst if s is not None]
        return serials

    from_a, from_b = await asyncio.gather(publish(a, "a"), publish(b, "b"))
    # Each node's callers got increasing serials in call order; together, 1..2n, no gap.
    assert from_a == sorted(from_a) and from_b == sorted(from_b)
    assert sorted(from_a + from_b) == list(range(1, 2 * n + 1))
    everything = list(range(1, 2 * n + 1))
    for seen in (seen_a, seen_b):
        await eventually(lambda s=seen: len(s.events) >= 2 * n, "every event on both nodes")
        assert seen.serials(CH) == everything  # once each, in serial order
    log = await a.read_events(CH, 0, 10_000)
    assert [e.serial for e in log] == everything
    assert seen_a.events == log and seen_b.events == log
    data = {e.data for e in log}
    assert data == {f"a{i}" for i in range(n)} | {f"b{i}" for i in range(n)}


async def test_rules_hold_across_nodes_one_update_wins(nodes: Callable[..., object]) -> None:
    a, b = await node(nodes), await node(nodes)
    s = (await a.append(create(CH, "draft", streaming=True))).serial
    assert s == 1
    # Both nodes try to finish the same stream at once: one final status wins, the other
    # is refused by the same rule as on one node, and no serial is taken by the loser.
    results = await asyncio.gather(
        a.append(event("update", 1, channel=CH, status="complete")),
        b.append(event("update", 1, channel=CH, status="failed")),
        return_exceptions=True,
    )
    stored = [r for r in results if not isinstance(r, BaseException)]
    assert len(stored) == 1 and stored[0].serial == 2
    message = await b.get_message(CH, 1)
    assert message is not None and message.status in ("complete", "failed")
    assert (await a.snapshot(CH, from_serial=None, rewind=0)).serial == 2


async def test_a_node_that_remembers_its_last_commit_sees_what_others_did_since(
    nodes: Callable[..., object], redis_url: str, redis_prefix: str
) -> None:
    # Node a skips reading the channel before a plain publish (it remembers the head it
    # committed); another node's write, and the loss of the data, must still be seen.
    a, b = await node(nodes), await node(nodes)
    assert (await a.append(create(CH, "a1"))).serial == 1
    assert (await a.append(create(CH, "a2"))).serial == 2
    assert (await b.append(create(CH, "b3"))).serial == 3
    assert (await a.append(create(CH, "a4"))).serial == 4
    before = await a.snapshot(CH, from_serial=None, rewind=0)
    client = redis.Redis.from_url(redis_url)
    try:
        lost = list(client.scan_iter(match=f"{redis_prefix}:*", count=1000))
        client.delete(*lost)
    finally:
        client.close()
    assert (await a.append(create(CH, "after"))).serial == 1  # a new log...
    after = await a.snapshot(CH, from_serial=None, rewind=10)
    assert after.epoch != before.epoch  # ...under a new epoch
    assert [m.data for m in after.messages] == ["after"]


async def test_text_with_newlines_is_stored_as_written_in_events_and_messages(
    nodes: Callable[..., object],
) -> None:
    # The commit joins events and messages with newlines; JSON escapes those in text.
    a = await node(nodes)
    text = "line 1\nline 2\r\n\n"
    s = (await a.append(create(CH, text, streaming=True))).serial
    assert s == 1
    await a.append(event("append", 1, channel=CH, data="\nmore\n"))
    await a.append(event("update", 1, channel=CH, status="complete", extras={"k": "a\nb"}))
    log = await a.read_events(CH, 0, 10)
    assert [e.data for e in log[:2]] == [text, "\nmore\n"]
    message = await a.get_message(CH, 1)
    assert message is not None and message.data == text + "\nmore\n"
    assert message.extras == {"k": "a\nb"} and message.status == "complete"


async def test_a_node_subscribing_late_gets_only_what_follows(
    nodes: Callable[..., object],
) -> None:
    a, b = await node(nodes), await node(nodes)
    for i in range(3):
        await a.append(create(CH, i))
    seen = attach(b)
    await b.bus.subscribe(CH)
    await b.bus.subscribe(CH)  # idempotent
    await a.append(create(CH, "after"))
    await eventually(lambda: len(seen.events) >= 1, "the event after the subscription")
    await asyncio.sleep(0.1)
    assert seen.serials(CH) == [4]
    await b.bus.unsubscribe(CH)
    await a.append(create(CH, "unsubscribed"))
    await asyncio.sleep(0.2)
    assert seen.serials(CH) == [4]


class BusyRecorder(Recorder):
    """A sink that, like the node, says how many subscribers a channel has here."""

    def __init__(self) -> None:
        super().__init__()
        self.subscribers: dict[str, int] = {}

    def occupancy(self, channel: str) -> int:
        return self.subscribers.get(channel, 0)


async def test_an_unsubscribe_that_a_new_subscriber_overtook_is_ignored(
    nodes: Callable[..., object],
) -> None:
    a, b = await node(nodes), await node(nodes)
    seen = BusyRecorder()
    b.bus.bind(seen)
    await b.bus.subscribe(CH)
    seen.subscribers[CH] = 1  # the node got a subscriber again before its unsubscribe ran
    await b.bus.unsubscribe(CH)
    await a.append(create(CH, "still wanted"))
    await eventually(lambda: len(seen.events) == 1, "the event after the stale unsubscribe")


async def test_presence_and_signals_cross_nodes_once(nodes: Callable[..., object]) -> None:
    a, b = await node(nodes), await node(nodes)
    seen_a, seen_b = attach(a), attach(b)
    await a.bus.subscribe(CH)
    await b.bus.subscribe(CH)
    enter = PresenceEvent(
        channel=CH, op="enter", client_id="alice", connection_id="c1", data={"s": 1}, timestamp=1
    )
    await a.bus.publish_presence(enter)
    await a.bus.publish_signal(SignalEvent(channel=CH, client_id="alice", name="typing"))
    await eventually(lambda: bool(seen_b.presence and seen_b.signals), "presence on node b")
    await asyncio.sleep(0.1)
    assert seen_b.presence == [enter] and seen_a.presence == [enter]
    assert [s.name for s in seen_b.signals] == ["typing"] and len(seen_a.signals) == 1


async def test_a_dead_nodes_members_are_reaped_once_by_a_survivor(
    nodes: Callable[..., object],
) -> None:
    a, b, c = await node(nodes), await node(nodes), await node(nodes)
    await a.node_heartbeat("node-a", 0.3)
    await b.node_heartbeat("node-b", 60)
    await c.node_heartbeat("node-c", 60)
    await a.presence_set(CH, member("alice", "c1", {"x": 1}), "node-a")
    await a.presence_set("room:two", member("alice", "c1"), "node-a")
    await b.presence_set(CH, member("bob", "c2"), "node-b")
    assert await b.reap_dead_nodes() == []
    await asyncio.sleep(0.4)  # node a stops heartbeating: it died
    from_b, from_c = await asyncio.gather(b.reap_dead_nodes(), c.reap_dead_nodes())
    reaped = from_b + from_c
    assert sorted((ch, m.client_id) for ch, m in reaped) == [(CH, "alice"), ("room:two", "alice")]
    assert not (from_b and from_c)  # one survivor did it all
    assert [m.client_id for m in await c.presence_members(CH)] == ["bob"]
    assert await c.presence_members("room:two") == []
    assert await b.reap_dead_nodes() == [] and await c.reap_dead_nodes() == []


async def test_a_member_that_moved_is_not_reaped_with_its_old_node(
    nodes: Callable[..., object],
) -> None:
    a, b = await node(nodes), await node(nodes)
    await a.node_heartbeat("node-a", 0.2)
    await b.node_heartbeat("node-b", 60)
    await a.presence_set(CH, member("alice", "c1", "old"), "node-a")
    await b.presence_set(CH, member("alice", "c1", "resumed"), "node-b")  # resumed on b
    await asyncio.sleep(0.3)
    assert await b.reap_dead_nodes() == []
    members = await b.presence_members(CH)
    assert [(m.client_id, m.data) for m in members] == [("alice", "resumed")]


async def test_resume_sessions_and_claims_work_across_nodes(nodes: Callable[..., object]) -> None:
    from roomcast.backends.base import ResumeSession

    a, b = await node(nodes), await node(nodes)
    session = ResumeSession("alice", "c1", {CH: None}, expires_at=time.time() + 60)
    await a.save_session("k", session)
    taken = await asyncio.gather(a.take_session("k"), b.take_session("k"))
    assert sorted(t is not None for t in taken) == [False, True]
    assert session in taken
    wins = await asyncio.gather(a.claim("job", "node-a", 5), b.claim("job", "node-b", 5))
    assert sorted(wins) == [False, True]
    assert await a.incr_counter("n", 1, 5) + await b.incr_counter("n", 2, 5) == 4


# --------------------------------------------------------------------------- failures


async def test_a_lost_bus_connection_is_caught_up_from_the_log(
    own_redis: OwnRedis, open_nodes: Callable[[str], Awaitable[RedisStore]]
) -> None:
    a, b = await open_nodes(own_redis.url), await open_nodes(own_redis.url)
    seen = attach(b)
    await b.bus.subscribe(CH)
    await a.append(create(CH, 0))
    await eventually(lambda: len(seen.events) == 1, "the first event")
    admin = redis.Redis(port=own_redis.port)
    # Node b's pub/sub connection drops; events published meanwhile never reach it.
    admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    admin.close()
    await asyncio.gather(*(a.append(create(CH, i)) for i in range(1, 50)))
    await eventually(lambda: len(seen.events) >= 50, "the events missed while away")
    await a.append(create(CH, "last"))
    await eventually(lambda: len(seen.events) >= 51, "the next live event")
    await asyncio.sleep(0.1)
    assert seen.serials(CH) == list(range(1, 52))


async def test_a_redis_restart_is_reported_then_survived_with_a_new_epoch(
    own_redis: OwnRedis, open_nodes: Callable[[str], Awaitable[RedisStore]]
) -> None:
    a, b = await open_nodes(own_redis.url), await open_nodes(own_redis.url)
    seen = attach(b)
    await b.bus.subscribe(CH)
    for i in range(3):
        await a.append(create(CH, i))
    before = await a.snapshot(CH, from_serial=None, rewind=0)
    await eventually(lambda: len(seen.events) == 3, "the first events")

    own_redis.stop()  # no persistence: everything is lost
    with pytest.raises(Unavailable, match=f"Redis store at 127.0.0.1:{own_redis.port}"):
        await a.append(create(CH, "while down"))
    with pytest.raises(Unavailable):
        await a.ping()

    own_redis.start()
    await a.ping()
    after = await a.append(create(CH, "after"))
    assert after.serial == 1  # a new log...
    snap = await a.snapshot(CH, from_serial=None, rewind=10)
    assert snap.epoch != before.epoch  # ...under a new epoch, so clients reload
    assert [m.data for m in snap.messages] == ["after"]
    # Node b's bus reconnects and delivers the new epoch's events.
    await eventually(lambda: len(seen.events) >= 4, "the event after the restart", 30)
    assert seen.serials(CH) == [1, 2, 3, 1]


# --------------------------------------------------------------------------- stopping


async def test_a_loop_of_store_calls_stops_whenever_it_is_cancelled(
    nodes: Callable[..., object],
) -> None:
    """A node's ticker heartbeats and reaps on the store; a shutdown cancels it wherever it
    stands. A cancel that lands as a command's send completes is lost on Python 3.11 (in
    most of these rounds), and the node then never stopped; cancel_and_wait stops it each
    time."""
    import random

    from roomcast.aio import cancel_and_wait

    store = await node(nodes)

    async def ticker() -> None:
        while True:
            await store.node_heartbeat("n-ticker", 5.0)
            await store.reap_dead_nodes()

    rng = random.Random(7)
    for _ in range(40):
        task = asyncio.create_task(ticker())
        await asyncio.sleep(rng.uniform(0, 0.004))
        await asyncio.wait_for(cancel_and_wait(task, recancel_s=0.05), 10)
        assert task.cancelled()
