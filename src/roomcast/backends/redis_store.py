"""The Store of the ``redis://`` backend: its client, lifecycle, reads and retention. How it
writes is in ``redis``, done by the writer task of ``redis_writer``; its presence, node
liveness, claims, counters and sessions are ``redis_ephemeral``."""

from __future__ import annotations

import asyncio
import contextlib

import msgspec

from roomcast.protocol import objects as live
from roomcast.protocol.messages import Event, Message, ObjectsSnapshot, ObjectState

from .apply import QueuedAppends
from .base import REPLAY_PAGE, ChannelInfo, Snapshot, Store, StoreOptions
from .local import new_epoch
from .redis import (
    LOAD,
    PURGE,
    READ_EVENTS,
    SNAPSHOT,
    Keys,
    decode_event,
    decode_message,
    decode_object,
    int_or,
    objects_from_flat,
    slot_tags,
)
from .redis_bus import RedisBus
from .redis_clients import redis_client
from .redis_ephemeral import RedisEphemeralState
from .redis_errors import RedisErrors
from .redis_writer import MAX_ATTEMPTS, RedisWriter
from .urls import BackendURLError

_CHUNK = 500  # fields per HMGET/HDEL
_READY_TTL_MS = 60_000  # the readiness probe's key expires: it holds nothing

_pair = msgspec.json.Decoder(tuple[str, int]).decode


class _Stamp(msgspec.Struct):
    timestamp: int


_stamp = msgspec.json.Decoder(_Stamp).decode


class RedisStore(QueuedAppends, RedisEphemeralState, Store):
    """The Store in Redis, shared by every node (how it works: see ``redis``).

    Args:
        url: ``redis://host:port/db`` or ``redis+sentinel://host:port[,...]/service/db``
            (see ``redis_clients``), with an optional ``?prefix=name`` (default
            ``roomcast``) that every key and pub/sub channel starts with.
        options: Dedup window and size limits.
    """

    bus: RedisBus
    _writer: RedisWriter

    def __init__(self, url: str, options: StoreOptions | None = None) -> None:
        client = redis_client(url)
        errors = RedisErrors(client.where)  # addresses only: the URL may hold a password
        keys = Keys(client.prefix, cluster=client.cluster)
        super().__init__(client.redis, keys, errors, cluster=client.cluster)
        self.url = client.url
        self.options = options or StoreOptions()
        self.bus = RedisBus(self.redis, client.prefix, sharded=client.cluster)
        self.bus.read_log = self.read_events
        self.bus.read_head = self._head
        self._writer = RedisWriter(self.redis, self.k, self.options, errors, self.bus.deliver_local)
        self._read_state = self.redis.register_script(LOAD)
        self._snapshot = self.redis.register_script(SNAPSHOT)
        self._read_events = self.redis.register_script(READ_EVENTS)
        self._purge = self.redis.register_script(PURGE)

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self._writer.running:
            return
        if not self._cluster:
            await self._refuse_cluster_node()
        else:
            await asyncio.to_thread(slot_tags)  # the epoch seeds' keys need it; not on the loop
        await self.ping()
        self._writer.start()

    async def _refuse_cluster_node(self) -> None:
        """A ``redis://`` URL naming a node of a Redis Cluster would work for the channels
        whose slots that node holds and fail for the others: refuse it at once."""
        from redis.exceptions import ResponseError

        with self._errors():
            try:
                info = await self.redis.info("cluster")
            except ResponseError:  # INFO not allowed to this user: nothing to tell
                return
        if int(info.get("cluster_enabled", 0)):
            raise BackendURLError(
                f"{self._errors.where} is a node of a Redis Cluster: use "
                "redis+cluster://host:port[,host:port...] (a redis:// URL names one server)"
            )

    async def aclose(self) -> None:
        await self._writer.stop()  # it writes what was accepted, then stops
        await self.bus.aclose()
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    async def ping(self) -> None:
        """Readiness (``/readyz``): a small write, not a PING, so that it fails on a server
        that refuses writes: a replica (a primary demoted by a failover, or a URL naming a
        replica), a primary short of replicas (``min-replicas-to-write``) or memory."""
        with self._errors():
            await self.redis.set(self.k.ready, b"1", px=_READY_TTL_MS)
        await self.bus.ping()

    # ------------------------------------------------------------ reads

    async def _head(self, channel: str) -> tuple[str | None, int]:
        with self._errors():
            epoch, serial = await self.redis.hmget(self.k.channel(channel)[0], "epoch", "serial")
        return (None if epoch is None else epoch.decode()), int_or(serial, 0)

    async def snapshot(
        self,
        channel: str,
        *,
        from_serial: int | None,
        rewind: int,
        replay_limit: int = REPLAY_PAGE,
        objects: bool = False,
    ) -> Snapshot:
        args: list[str | int] = [
            new_epoch(),
            -1 if from_serial is None else from_serial,
            max(0, rewind),
            replay_limit,
            "1" if objects else "0",
            channel,
        ]
        keys = [*self.k.channel(channel), self.k.epoch_seed(channel)]
        with self._errors():
            reply = await self._snapshot(keys=keys, args=args)
        epoch, serial, first, messages, has_events, events, found = reply
        snap_objects = None
        if objects:
            snap_objects = ObjectsSnapshot(
                serial=int(serial), objects=live.with_root(objects_from_flat(found))
            )
        return Snapshot(
            epoch=epoch.decode(),
            serial=int(serial),
            first_serial=int(first),
            messages=[decode_message(body) for body in reversed(messages) if body is not None],
            events=[decode_event(body) for body in events if body is not None]
            if has_events
            else None,
            objects=snap_objects,
        )

    async def read_events(self, channel: str, after: int, limit: int) -> list[Event]:
        if limit <= 0:
            return []
        with self._errors():
            bodies = await self._read_events(
                keys=self.k.channel(channel)[:2], args=[max(0, after), limit]
            )
        return [decode_event(body) for body in bodies if body is not None]

    async def history(
        self, channel: str, *, before: int | None, after: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        _, _, messages_key, index, _ = self.k.channel(channel)
        with self._errors():
            if after is not None:
                ids = await self.redis.zrangebyscore(
                    index, f"({after}", "+inf", start=0, num=limit + 1
                )
                chosen = ids[:limit]
            else:
                top = "+inf" if before is None else f"({before}"
                ids = await self.redis.zrevrangebyscore(index, top, "-inf", start=0, num=limit + 1)
                chosen = ids[:limit][::-1]
            bodies = await self.redis.hmget(messages_key, chosen) if chosen else []
        return [decode_message(b) for b in bodies if b is not None], len(ids) > limit

    async def get_message(self, channel: str, msg_serial: int) -> Message | None:
        with self._errors():
            body = await self.redis.hget(self.k.channel(channel)[2], str(msg_serial))
        return None if body is None else decode_message(body)

    async def get_object(self, channel: str, object_id: str) -> ObjectState | None:
        with self._errors():
            body = await self.redis.hget(self.k.channel(channel)[4], object_id)
        return None if body is None else decode_object(body)

    async def objects(self, channel: str) -> ObjectsSnapshot:
        head, _, messages_key, _, objects_key = self.k.channel(channel)
        with self._errors():
            reply = await self._read_state(keys=[head, messages_key, objects_key], args=["1"])
        serial = reply[0][1]
        return ObjectsSnapshot(
            serial=int_or(serial, 0), objects=live.with_root(objects_from_flat(reply[3]))
        )

    async def _infos(self, names: list[str]) -> list[ChannelInfo]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hmget(self.k.channel(name)[0], "epoch", "serial", "updated")
            rows = await pipe.execute()
        return [
            ChannelInfo(name, epoch.decode(), int(serial), int_or(updated, 0))
            for name, (epoch, serial, updated) in zip(names, rows, strict=True)
            if epoch is not None and int_or(serial, 0) > 0
        ]

    async def channel_info(self, channel: str) -> ChannelInfo | None:
        with self._errors():
            found = await self._infos([channel])
        return found[0] if found else None

    async def list_channels(self, prefix: str, limit: int, after: str = "") -> list[ChannelInfo]:
        # Channel names are UTF-8, which never holds the byte 0xff: the range's end.
        low = b"(" + after.encode() if after > prefix else b"[" + prefix.encode()
        high = b"(" + prefix.encode() + b"\xff"
        with self._errors():
            names = await self.redis.zrangebylex(self.k.channels, low, high, start=0, num=limit)
            return await self._infos([n.decode() for n in names])

    async def streaming_messages(self, idle_since_ms: int, limit: int) -> list[tuple[str, Message]]:
        found: list[tuple[str, Message]] = []
        offset = 0
        page = max(limit, 100)
        with self._errors():
            while len(found) < limit:
                members = await self.redis.zrangebyscore(
                    self.k.streaming, "-inf", f"({idle_since_ms}", start=offset, num=page
                )
                if not members:
                    break
                offset += len(members)
                async with self.redis.pipeline(transaction=False) as pipe:
                    pairs = [_pair(member) for member in members]
                    for channel, msg_serial in pairs:
                        pipe.hget(self.k.channel(channel)[2], str(msg_serial))
                    bodies = await pipe.execute()
                stale: list[bytes] = []
                for member, (channel, _), body in zip(members, pairs, bodies, strict=True):
                    message = None if body is None else decode_message(body)
                    if message is None or message.status != "streaming" or message.deleted:
                        stale.append(member)
                    elif message.updated_at < idle_since_ms:
                        found.append((channel, message))
                if stale:  # the index heals: entries a commit could not remove
                    await self.redis.zrem(self.k.streaming, *stale)
                    offset -= len(stale)
        found.sort(key=lambda item: item[1].updated_at)
        return found[:limit]

    async def purge(self, now_ms: int, retention_ms: int) -> int:
        """Idempotency keys expire by their TTL; retention drops old events and messages."""
        if retention_ms <= 0:
            return 0
        cutoff = now_ms - retention_ms
        dropped = 0
        with self._errors():
            names = [n.decode() for n in await self.redis.zrange(self.k.channels, 0, -1)]
            for name in names:
                dropped += await self._purge_channel(name, cutoff)
        return dropped

    async def _purge_channel(self, channel: str, cutoff: int) -> int:
        head, log_key, messages_key, index, _ = self.k.channel(channel)
        for _ in range(MAX_ATTEMPTS):
            serial_raw, first_raw = await self.redis.hmget(head, "serial", "first")
            serial, first = int_or(serial_raw, 0), int_or(first_raw, 1)
            new_first = first
            while new_first <= serial:  # the first event young enough to keep
                hi = min(serial, new_first + _CHUNK - 1)
                bodies = await self.redis.hmget(log_key, list(range(new_first, hi + 1)))
                young = [
                    i for i, body in enumerate(bodies) if body and _stamp(body).timestamp >= cutoff
                ]
                if young:
                    new_first += young[0]
                    break
                new_first = hi + 1
            if new_first <= first:
                return 0
            ids = await self.redis.zrangebyscore(index, "-inf", f"({new_first}")
            old: list[bytes] = []
            if ids:
                bodies = await self.redis.hmget(messages_key, ids)
                old = [
                    i
                    for i, body in zip(ids, bodies, strict=True)
                    if body is None or _stamp(body).timestamp < cutoff
                ]
            args: list[bytes | int] = [first, new_first, *old]
            count = await self._purge(keys=[head, log_key, messages_key, index], args=args)
            if int(count) >= 0:
                return int(count)
        return 0

    # ------------------------------------------------------------ tests

    async def drop_prefix(self) -> int:
        """Delete every key under this store's prefix (for tests); returns how many."""
        dropped = 0
        with self._errors():
            async for key in self.redis.scan_iter(match=f"{self.k.prefix}:*", count=1000):
                dropped += await self.redis.delete(key)
        return dropped


__all__ = ["RedisStore"]
