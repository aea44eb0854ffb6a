"""Fixtures shared by the backend tests: a store per backend URL, opened and closed per test.

The ``redis`` backend uses the Redis at ``REDIS_URL`` (default redis://127.0.0.1:6379/0), with
a key prefix of its own per test, deleted after the test. If that Redis is not reachable,
those tests fail (they never skip): start it with ``redis-server --save "" --appendonly no``.
The ``sentinel`` backend (``redis+sentinel://``) runs on a Sentinel setup of its own (a
primary, a replica, three Sentinels), started once per session, a key prefix per test.
The ``cluster`` backend (``redis+cluster://``) runs on a Redis Cluster of three masters,
started once per session, a key prefix per test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from redis_cluster import drop_cluster_prefix, redis_cluster
from redis_sentinel import SentinelSetup, sentinel_setup
from roomcast.backends import Store, StoreOptions, open_backend
from roomcast.backends.measured import MeasuredStore
from roomcast.testing import RedisClusterProcesses

MakeStore = Callable[..., Awaitable[Store]]
MEASURED = "measured+"  # a URL prefix meaning: that store, wrapped in a MeasuredStore
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def require_redis(url: str = REDIS_URL) -> None:
    """Fail (never skip) with a clear message when the test Redis is not there."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"the Redis tests need a Redis at {url} ({exc}); start one with "
            "`redis-server --save '' --appendonly no` or set REDIS_URL",
            pytrace=False,
        )
    finally:
        client.close()


def drop_redis_prefix(prefix: str, url: str = REDIS_URL) -> None:
    """Delete every key of a test's prefix."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def redis_check() -> Callable[[str], None]:
    """:func:`require_redis`, for the tests of that check."""
    return require_redis


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A unique key prefix on the test Redis, whose keys are deleted after the test."""
    require_redis()
    prefix = f"test-{uuid.uuid4().hex}"
    yield prefix
    drop_redis_prefix(prefix)


class TimingSink:
    """A StoreObserver that checks what it is told and keeps nothing."""

    def appended(self, op: str, seconds: float, events: int) -> None:
        assert seconds >= 0 and events >= 0, (op, seconds, events)

    def read(self, op: str, seconds: float) -> None:
        assert seconds >= 0, (op, seconds)


@pytest.fixture(scope="session")
def sentinel_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    """A Sentinel setup shared by the tests of a session (none of them fails it over)."""
    with sentinel_setup(tmp_path_factory.mktemp("sentinel")) as setup:
        yield setup


@pytest.fixture
def sentinel_url(sentinel_service: SentinelSetup) -> Iterator[str]:
    """A ``redis+sentinel://`` URL with a prefix of this test's own, deleted after it."""
    prefix = f"test-{uuid.uuid4().hex}"
    yield sentinel_service.url(prefix=prefix)
    drop_redis_prefix(prefix, sentinel_service.primary().url)


@pytest.fixture(scope="session")
def cluster_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    """A Redis Cluster of three masters shared by the tests of a session."""
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def cluster_url(cluster_service: RedisClusterProcesses) -> Iterator[str]:
    """A ``redis+cluster://`` URL with a prefix of this test's own, deleted after it."""
    prefix = f"test-{uuid.uuid4().hex}"
    yield cluster_service.url(prefix=prefix)
    drop_cluster_prefix(cluster_service, prefix)


@pytest.fixture(params=["memory", "sqlite", "measured", "redis", "sentinel", "cluster"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "measured":
        return MEASURED + f"sqlite:///{tmp_path}/x.db"
    if request.param == "redis":
        prefix: str = request.getfixturevalue("redis_prefix")
        return f"{REDIS_URL}?prefix={prefix}"
    if request.param == "sentinel":
        url: str = request.getfixturevalue("sentinel_url")
        return url
    if request.param == "cluster":
        cluster: str = request.getfixturevalue("cluster_url")
        return cluster
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/x.db"


@pytest.fixture
async def make_store(backend_url: str) -> AsyncIterator[MakeStore]:
    """Opens stores for ``backend_url`` (with given options) and closes them after the test."""
    opened: list[Store] = []

    async def make(options: StoreOptions | None = None) -> Store:
        url = backend_url.removeprefix(MEASURED)
        store = open_backend(url, options or StoreOptions())
        if url != backend_url:
            store = MeasuredStore(store, TimingSink())
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in reversed(opened):
        await store.aclose()


@pytest.fixture
async def store(make_store: MakeStore) -> Store:
    return await make_store()
