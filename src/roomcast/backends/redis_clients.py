"""The redis-py client of the Redis store, built from its URL (one function per kind of
deployment):

- ``redis://`` and ``rediss://``: one Redis server.
- ``redis+sentinel://`` and ``rediss+sentinel://``: the primary of a Sentinel service. The
  pool asks the Sentinels who the primary is when it opens a connection and once a second
  while in use; when the primary moves it closes every connection to the old one (the bus's
  pub/sub connection included), and the next command or read goes to the new primary.
- ``redis+cluster://`` and ``rediss+cluster://``: a Redis Cluster. redis-py's cluster
  client learns from the startup nodes which master holds each slot and sends each
  command there; every script of the store names keys of one slot (a channel's hash
  tag, or one node-level key).

Either way a node talks to Redis over a blocking pool of at most 64 connections (on a
cluster: at most 64 commands at once, see :class:`BoundedCluster`): a burst of requests
(hundreds of clients dropping at once, each storing its resume session) waits for a free
connection instead of failing with "Too many connections".
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.exceptions import ConnectionError, RedisError, ResponseError, TimeoutError

from roomcast.aio import cancel_and_wait

from .redis import (
    CLUSTER_SCHEMES,
    SENTINEL_SCHEMES,
    parse_cluster_url,
    parse_redis_url,
    parse_sentinel_url,
)
from .redis_bus import describe

log = logging.getLogger(__name__)

POOL_SIZE = 64  # connections to Redis per node, at most (the bus holds one of them)
POOL_WAIT_S = 20.0  # how long a request waits for a free connection
FOLLOW_EVERY_S = 1.0  # how often a Sentinel pool in use asks who the primary is
_CONNECT_TIMEOUT_S = 5.0
_HEALTH_CHECK_S = 10  # a connection idle this long is checked (PING) before it is used


@dataclass(frozen=True, slots=True)
class RedisClient:
    """A ``redis.asyncio.Redis`` for a store URL, and what the store needs to know of it."""

    redis: Any  # redis.asyncio.Redis; closing it closes its pool
    prefix: str  # the key prefix (``?prefix=``)
    where: str  # the address for errors and logs: never a password
    url: str  # the URL without the roomcast parameters (it may hold a password)
    cluster: bool = False  # a RedisCluster: sharded pub/sub is read per node


def redis_client(url: str) -> RedisClient:
    """The client for a ``redis[s]://`` or ``redis[s]+sentinel://`` store URL.

    Raises:
        ValueError: The URL is malformed (the message says how).
    """
    if urlsplit(url).scheme in SENTINEL_SCHEMES:
        return sentinel_client(url)
    if urlsplit(url).scheme in CLUSTER_SCHEMES:
        return cluster_client(url)
    return single_client(url)


def single_client(url: str) -> RedisClient:
    """One Redis server: ``redis://[:password@]host:port/db[?prefix=name]``."""
    plain, prefix = parse_redis_url(url)
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        plain,
        max_connections=POOL_SIZE,
        timeout=POOL_WAIT_S,
        socket_connect_timeout=_CONNECT_TIMEOUT_S,
        health_check_interval=_HEALTH_CHECK_S,
    )
    parts = urlsplit(plain)  # host and port only: the URL may hold a password
    where = f"{parts.hostname}:{parts.port or 6379}"
    return RedisClient(redis.asyncio.Redis.from_pool(pool), prefix, where, plain)


def sentinel_client(url: str) -> RedisClient:
    """The primary of a Sentinel service (see :func:`~.redis.parse_sentinel_url`)."""
    target = parse_sentinel_url(url)
    tls: dict[str, Any] = {"ssl": True} if target.tls else {}
    sentinel_options: dict[str, Any] = {
        "socket_connect_timeout": _CONNECT_TIMEOUT_S,
        "socket_timeout": _CONNECT_TIMEOUT_S,
        **tls,
    }
    if target.sentinel_password is not None:
        sentinel_options["password"] = target.sentinel_password
    sentinel = Sentinels(target.sentinels, sentinel_kwargs=sentinel_options)
    client = sentinel.master_for(
        target.service,
        connection_pool_class=FollowingPool,
        # SentinelConnectionPool is not a blocking pool; FollowingPool is both, so a burst
        # waits for one of the 64 connections as on a single Redis.
        max_connections=POOL_SIZE,
        timeout=POOL_WAIT_S,
        db=target.db,
        username=target.username,
        password=target.password,
        socket_connect_timeout=_CONNECT_TIMEOUT_S,
        health_check_interval=_HEALTH_CHECK_S,
        **tls,
    )
    plain = urlsplit(url)._replace(query="").geturl()
    return RedisClient(client, target.prefix, target.where, plain)


class Sentinels(Sentinel):
    """redis-py's Sentinel client, whose error when no Sentinel names a primary says what
    each one answered in a line (redis-py's names every Sentinel by its client's repr)."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        """The primary's (host, port), from the first Sentinel that names one it deems up.

        Raises:
            MasterNotFoundError: No Sentinel answered, or none names a primary that is up.
        """
        answers: list[str] = []
        for i, sentinel in enumerate(self.sentinels):
            options = sentinel.connection_pool.connection_kwargs
            where = f"{options.get('host')}:{options.get('port')}"
            try:
                masters: dict[str, Any] = await sentinel.sentinel_masters()  # type: ignore[assignment]
            except (ConnectionError, ResponseError, TimeoutError) as exc:
                answers.append(f"{where}: {describe(exc)}")
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                # The Sentinel that answered is asked first next time (as redis-py does).
                self.sentinels[0], self.sentinels[i] = sentinel, self.sentinels[0]
                return state["ip"], int(state["port"])
            answers.append(
                f"{where}: names no primary that is up"
                if state
                else f"{where}: does not monitor it"
            )
        raise MasterNotFoundError(
            f"no Sentinel names a primary for {service_name!r} ({'; '.join(answers)})"
        )


class FollowingPool(SentinelConnectionPool, redis.asyncio.BlockingConnectionPool):
    """A blocking pool of connections to the primary of a Sentinel service, which follows
    the primary when it moves.

    redis-py's Sentinel pool asks the Sentinels only when it opens a connection. After a
    failover the old primary keeps serving the connections already open: reads, pub/sub
    that no longer hears the new primary's events, and writes that it accepts until the
    Sentinels turn it into a replica (about ten seconds later, writes lost then) or that it
    refuses (``NOREPLICAS`` with ``min-replicas-to-write``; ``READONLY`` once a replica).
    So while the pool is in use it asks the Sentinels every :data:`FOLLOW_EVERY_S`, and
    closes every connection that points elsewhere than the primary they name: an idle one
    at once, one in use too (its command fails with a connection error; the pub/sub reader
    reconnects and subscribes again).
    """

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self._watch: asyncio.Task[None] | None = None
        self._announced: tuple[str, int] | None = None

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._follow_loop(), name="roomcast-sentinel")
        return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]

    async def _follow_loop(self) -> None:
        while True:
            await asyncio.sleep(FOLLOW_EVERY_S)
            try:
                await self.follow()
            except RedisError:
                pass  # no Sentinel answers, or none names a primary: commands say so

    async def follow(self) -> None:
        """Ask the Sentinels who the primary is, and close connections to any other."""
        # This closes the idle connections if the primary moved.
        address: tuple[str, int] = await self.get_master_address()  # type: ignore[no-untyped-call]
        if self._announced is not None and address != self._announced:
            log.warning(
                "Sentinel service %s: the primary moved from %s:%s to %s:%s",
                self.service_name,
                *self._announced,
                *address,
            )
        self._announced = address
        stale = [
            connection
            for connection in [*self._available_connections, *self._in_use_connections]
            if connection.is_connected and _address(connection) != address
        ]
        for connection in stale:
            with contextlib.suppress(Exception):
                # Without waiting for the socket to close: the task using it may be reading.
                await connection.disconnect(nowait=True)

    async def aclose(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            await cancel_and_wait(watch)
        try:
            await super().aclose()
        finally:
            await self.sentinel_manager.aclose()


def cluster_client(url: str) -> RedisClient:
    """A Redis Cluster (see :func:`~.redis.parse_cluster_url`)."""
    target = parse_cluster_url(url)
    client = BoundedCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        # Per master: the commands (at most POOL_SIZE at once, see BoundedCluster) and the
        # bus's pub/sub connection, with room for one being replaced.
        max_connections=POOL_SIZE + 2,
        username=target.username,
        password=target.password,
        socket_connect_timeout=_CONNECT_TIMEOUT_S,
        health_check_interval=_HEALTH_CHECK_S,
        ssl=target.tls,
    )
    plain = urlsplit(url)._replace(query="").geturl()
    return RedisClient(client, target.prefix, target.where, plain, cluster=True)


class BoundedCluster(RedisCluster):
    """redis-py's cluster client, whose commands wait for one of :data:`POOL_SIZE` turns.

    Its connections to each master are not a blocking pool: past ``max_connections`` a
    command fails with "Too many connections". So at most :data:`POOL_SIZE` commands and
    pipelines are under way at once (each holds at most one connection per master), and a
    burst waits for a turn as it does for a free connection on a single Redis. A command
    that redis-py sends on behalf of another (a pipeline's redirected command) shares its
    turn.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._turns = asyncio.Semaphore(POOL_SIZE)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold one of the turns (or share the one this task already holds)."""
        if _HOLDING_TURN.get():
            yield
            return
        async with self._turns:
            token = _HOLDING_TURN.set(True)
            try:
                yield
            finally:
                _HOLDING_TURN.reset(token)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.turn():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # refused by redis-py
        return _BoundedPipeline(self, transaction)  # type: ignore[abstract]


class _BoundedPipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        assert isinstance(self.cluster_client, BoundedCluster)
        async with self.cluster_client.turn():
            return await super().execute(raise_on_error, allow_redirections)


_HOLDING_TURN: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "roomcast_cluster_turn", default=False
)


def _address(connection: Any) -> tuple[str, int]:
    return connection.host, connection.port


__all__ = [
    "FOLLOW_EVERY_S",
    "POOL_SIZE",
    "POOL_WAIT_S",
    "BoundedCluster",
    "FollowingPool",
    "RedisClient",
    "Sentinels",
    "cluster_client",
    "redis_client",
    "sentinel_client",
    "single_client",
]
