"""What the ``redis+sentinel://`` store promises: its URL, and that a node follows the primary
of a Sentinel service when it moves (the contract suite runs on it too: conftest).

Tests that need servers start their own (a primary, a replica and three Sentinels, from
``tests/redis_sentinel.py``); without ``redis-server`` they fail, never skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis
from test_contract import Recorder, create

from redis_sentinel import sentinel_setup
from redis_servers import RedisServer
from roomcast.backends import BackendURLError, StoreOptions, open_backend, shown_url
from roomcast.backends.redis import SentinelURL, parse_sentinel_url
from roomcast.backends.redis_clients import FOLLOW_EVERY_S, POOL_SIZE, FollowingPool
from roomcast.backends.redis_store import RedisStore
from roomcast.protocol.errors import Unavailable
from roomcast.testing import free_port

CH = "room:sentinel"
PASSWORD = "pw-0f7c1e"  # not a word that a message would contain by chance


# --------------------------------------------------------------------------- URLs


def test_a_sentinel_url_names_the_sentinels_the_service_the_database_and_the_prefix() -> None:
    url = "redis+sentinel://:s%40cret@10.0.0.1:26380,10.0.0.2,[::1]:5000/chat/3?prefix=app"
    assert parse_sentinel_url(url) == SentinelURL(
        sentinels=(("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 5000)),
        service="chat",
        db=3,
        prefix="app",
        password="s@cret",
    )
    short = parse_sentinel_url("redis+sentinel://h:1/chat")
    assert (short.db, short.prefix, short.password, short.tls) == (0, "roomcast", None, False)
    full = parse_sentinel_url("rediss+sentinel://u:p@h:1/chat/0/?sentinel_password=q")
    assert (full.username, full.password, full.sentinel_password, full.tls) == ("u", "p", "q", True)
    assert full.where == "chat (Sentinels h:1)"
    assert (
        parse_sentinel_url(url).where == "chat (Sentinels 10.0.0.1:26380,10.0.0.2:26379,[::1]:5000)"
    )


def test_the_sentinel_store_uses_a_blocking_pool_of_64_and_its_prefix() -> None:
    store = open_backend("redis+sentinel://127.0.0.1:1,127.0.0.1:2/chat/2?prefix=app1")
    assert isinstance(store, RedisStore)
    assert store.k.channel("a:b")[0] == "app1:{a:b}:head"
    pool = store.redis.connection_pool
    assert isinstance(pool, FollowingPool)
    assert isinstance(pool, redis.asyncio.BlockingConnectionPool)
    assert (pool.max_connections, pool.service_name) == (POOL_SIZE, "chat")
    assert pool.connection_kwargs["db"] == 2


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel:///chat/0", "names no Sentinel"),
        ("redis+sentinel://:PW@/chat/0", "names no Sentinel"),
        ("redis+sentinel://h:1,,h:2/chat/0", "an empty Sentinel address"),
        ("redis+sentinel://:1/chat", "without a host"),
        ("redis+sentinel://:PW@h:1", "names no service"),
        ("redis+sentinel://h:1/", "names no service"),
        ("redis+sentinel://h:1//0", "names no service"),
        ("redis+sentinel://:PW@h:port/chat/0", "bad port 'port'"),
        ("redis+sentinel://h:1,h:70000/chat/0", "bad port '70000'"),
        ("redis+sentinel://h:0/chat/0", "bad port '0'"),
        ("redis+sentinel://[::1]x/chat/0", "bad Sentinel address"),
        ("redis+sentinel://:PW@[::1/chat/0", "Invalid IPv6"),
        ("redis+sentinel://:PW@h:1/chat/one", "the database must be a number"),
        ("redis+sentinel://h:1/chat/-1", "the database must be a number"),
        ("redis+sentinel://h:1/chat/0/1", "the path is /service/db"),
        ("redis+sentinel://h:1/chat/0?prefix=a{b}", "prefix"),
        ("redis+sentinel://h:1/chat/0?timeout=3&sentinel_password=PW", "unknown parameter"),
    ],
)
def test_a_bad_sentinel_url_says_what_is_wrong_without_its_passwords(url: str, says: str) -> None:
    with pytest.raises(BackendURLError, match=says) as caught:
        open_backend(url)
    assert "PW" not in str(caught.value)


def test_store_urls_are_shown_with_their_passwords_masked() -> None:
    assert shown_url("redis://:PW@h:1/0?prefix=p") == "redis://:***@h:1/0?prefix=p"
    assert shown_url("redis://u:PW@h:1/0") == "redis://u:***@h:1/0"
    assert (
        shown_url("redis+sentinel://:PW@h:1,h:2/s/0?sentinel_password=PW&prefix=p")
        == "redis+sentinel://:***@h:1,h:2/s/0?sentinel_password=***&prefix=p"
    )
    for plain in ("redis://h:1/0", "sqlite:///a/b.db", "sqlite:////abs.db", "memory://"):
        assert shown_url(plain) == plain


# --------------------------------------------------------------------------- servers


@pytest.fixture
async def open_store() -> AsyncIterator[Callable[[str], Awaitable[RedisStore]]]:
    """Opens stores ("nodes"), bus included; closes them after the test."""
    opened: list[RedisStore] = []

    async def make(url: str) -> RedisStore:
        store = open_backend(url, StoreOptions())
        assert isinstance(store, RedisStore)
        opened.append(store)
        await store.bus.open()
        await store.open()
        return store

    yield make
    for store in reversed(opened):
        await store.aclose()


async def eventually(check: Callable[[], object], what: str, within: float = 20.0) -> float:
    """Wait until ``check()`` is true; returns when (``time.monotonic()``)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic()


def connected_to(store: RedisStore) -> set[int]:
    """The ports of the servers that a store's connections (pub/sub included) are open to."""
    pool = store.redis.connection_pool
    connections = [*pool._available_connections, *pool._in_use_connections]
    return {c.port for c in connections if c.is_connected}


def shard_subscribers(server: RedisServer) -> int:
    """Clients subscribed to a sharded pub/sub channel on ``server``."""
    with contextlib.closing(server.client()) as client:
        return sum(1 for c in client.client_list() if int(c.get("ssub", 0)) > 0)


async def test_after_a_failover_the_stores_and_their_bus_follow_the_new_primary(
    tmp_path: Path, open_store: Callable[[str], Awaitable[RedisStore]]
) -> None:
    with sentinel_setup(tmp_path) as setup:
        old = setup.primary()
        a, b = await open_store(setup.url()), await open_store(setup.url())
        seen_a, seen_b = Recorder(), Recorder()
        a.bus.bind(seen_a)
        b.bus.bind(seen_b)
        await a.bus.subscribe(CH)
        await b.bus.subscribe(CH)
        for i in range(5):
            await (a if i % 2 else b).append(create(CH, f"before{i}"))
        await eventually(lambda: len(seen_a.events) == len(seen_b.events) == 5, "5 events")
        assert connected_to(a) == connected_to(b) == {old.port}
        assert shard_subscribers(old) == 2
        setup.wait_in_sync()  # nothing acknowledged is left only on the old primary

        setup.failover()
        new = setup.replica()
        switched = await eventually(lambda: setup.primary() is new, "the Sentinels' switch")
        # Both stores, the bus's pub/sub connection included, move to the new primary
        # within one check of the Sentinels (every FOLLOW_EVERY_S) of their switch; nothing
        # needs to go wrong on the old primary first.
        for store in (a, b):
            await eventually(lambda s=store: connected_to(s) <= {new.port}, "following")
        followed = time.monotonic() - switched
        assert followed < FOLLOW_EVERY_S + 1.0, followed
        await eventually(lambda: shard_subscribers(new) == 2, "the bus on the new primary")

        # Events flow between the two nodes through the new primary, in one gap-free order.
        for i in range(10):
            await (a if i % 2 else b).append(create(CH, f"after{i}"))
        await eventually(lambda: len(seen_a.events) == len(seen_b.events) == 15, "15 events")
        for seen in (seen_a, seen_b):
            assert seen.serials(CH) == list(range(1, 16))
            assert [e.data for e in seen.events[5:]] == [f"after{i}" for i in range(10)]
        assert [e.data for e in await b.read_events(CH, 0, 100)][:5] == [
            f"before{i}" for i in range(5)
        ]
        await a.ping()
        await b.ping()


async def test_the_readiness_probe_fails_where_writes_fail(
    tmp_path: Path, open_store: Callable[[str], Awaitable[RedisStore]]
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        store = await open_store(server.url)
        admin = server.client()
        # A read-only replica (what a primary becomes after a failover) answers PING, and
        # reads, but refuses writes: so does the probe.
        admin.replicaof("127.0.0.1", free_port())
        with pytest.raises(Unavailable, match="read only replica"):
            await store.ping()
        # A primary short of replicas (min-replicas-to-write) refuses writes too.
        admin.replicaof("NO", "ONE")
        admin.config_set("min-replicas-to-write", 1)
        with pytest.raises(Unavailable, match="NOREPLICAS"):
            await store.ping()
        admin.config_set("min-replicas-to-write", 0)
        await store.ping()
        admin.close()
    finally:
        server.stop()


async def test_passwords_reach_the_servers_and_the_sentinels_and_never_show(
    tmp_path: Path, open_store: Callable[[str], Awaitable[RedisStore]]
) -> None:
    with sentinel_setup(tmp_path, password=PASSWORD, sentinel_password=PASSWORD + "s") as setup:
        store = await open_store(setup.url(prefix="p"))
        appended = await store.append(create(CH, "hello"))
        assert [e.data for e in await store.read_events(CH, 0, 10)] == ["hello"]
        assert appended.serial == 1
        # Refused, with the service and its Sentinels named, never a password: a wrong
        # password for the servers, none for the Sentinels, no Sentinel there.
        where = "roomcast (Sentinels " + ",".join(f"127.0.0.1:{s.port}" for s in setup.sentinels)
        nobody = f"redis+sentinel://:{PASSWORD}@127.0.0.1:{free_port()}/roomcast/0"
        for url in (
            setup.url().replace(f"{PASSWORD}@", f"{PASSWORD}x@"),
            setup.url().split("?")[0],
            nobody,
        ):
            with pytest.raises(Unavailable) as caught:
                await open_store(url)
            text = str(caught.value)
            assert text.startswith("the Redis store at roomcast (Sentinels 127.0.0.1:"), text
            assert url == nobody or text.startswith(f"the Redis store at {where})"), text
            assert PASSWORD not in text, text
