"""The Store of the ``redis://`` backend (how it writes: see ``redis``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from msgspec import UNSET

from roomcast.protocol import objects as live
from roomcast.protocol.errors import RoomcastError, Unavailable
from roomcast.protocol.messages import Event, Message, ObjectsSnapshot, ObjectState, PresenceMember

from . import BackendURLError
from .apply import check_batch, encode_event, sequence
from .base import (
    DEFAULT_NODE_TTL_S,
    REPLAY_PAGE,
    TAKEN_TTL_S,
    Appended,
    ChannelInfo,
    ResumeSession,
    Snapshot,
    Store,
    StoreOptions,
)
from .local import new_epoch, now_ms
from .redis import (
    CLAIM,
    COMMIT,
    COUNTER,
    KEEP_SESSION,
    LOAD,
    PRESENCE_ADOPT,
    PRESENCE_REMOVE,
    PURGE,
    READ_EVENTS,
    SNAPSHOT,
    TAKEN,
    Keys,
)
from .redis_bus import RedisBus, bus_channel, describe
from .redis_clients import redis_client

log = logging.getLogger(__name__)

_MAX_BATCH = 1000  # queued writes taken at once
_MAX_ATTEMPTS = 50  # compare-and-set attempts per channel group before giving up
_CHUNK = 500  # fields per HMGET/HDEL
_READY_TTL_MS = 60_000  # the readiness probe's key expires: it holds nothing

_encode = msgspec.json.Encoder().encode
_event = msgspec.json.Decoder(Event).decode
_message = msgspec.json.Decoder(Message).decode
_object = msgspec.json.Decoder(ObjectState).decode
_session = msgspec.json.Decoder(ResumeSession).decode
_held = msgspec.json.Decoder(tuple[str, PresenceMember]).decode
_pair = msgspec.json.Decoder(tuple[str, int]).decode
_triple = msgspec.json.Decoder(tuple[str, str, str]).decode


class _Stamp(msgspec.Struct):
    timestamp: int


_stamp = msgspec.json.Decoder(_Stamp).decode


@dataclass(slots=True, eq=False)
class _Work:
    events: Sequence[Event]
    keys: Sequence[str | None]
    future: asyncio.Future[Any]
    batch: bool
    result: Any = None
    error: BaseException | None = None


@dataclass(slots=True)
class _Group:
    """One channel's state as read, and the writes computed on it (one attempt)."""

    channel: str
    epoch: str | None
    serial: int
    first: int
    obytes: int
    messages: dict[int, Message | None]
    keys: dict[str, int | None]
    objects: dict[str, ObjectState]
    base_serial: int = 0
    events: list[tuple[Event, bytes]] = field(default_factory=list)
    dirty: dict[int, tuple[Message, bool]] = field(default_factory=dict)
    dirty_objects: dict[str, ObjectState] = field(default_factory=dict)
    new_keys: dict[str, int] = field(default_factory=dict)

    def checkpoint(self) -> tuple[Any, ...]:
        return (
            self.serial,
            self.obytes,
            len(self.events),
            dict(self.messages),
            dict(self.keys),
            dict(self.objects),
            dict(self.dirty),
            dict(self.dirty_objects),
            dict(self.new_keys),
        )

    def rollback(self, saved: tuple[Any, ...]) -> None:
        self.serial, self.obytes, count = saved[0], saved[1], saved[2]
        del self.events[count:]
        self.messages, self.keys, self.objects = saved[3], saved[4], saved[5]
        self.dirty, self.dirty_objects, self.new_keys = saved[6], saved[7], saved[8]


def _needs(works: list[_Work]) -> tuple[list[int], list[str], bool]:
    """What a group must read: the messages and idempotency keys its events name, and
    whether it has object operations (then it reads the channel's objects)."""
    msg_serials: set[int] = set()
    keys: set[str] = set()
    any_objects = False
    for work in works:
        for event, key in zip(work.events, work.keys, strict=True):
            if event.msg_serial is not UNSET:
                msg_serials.add(event.msg_serial)
            if key is not None:
                keys.add(key)
            any_objects = any_objects or event.type == "object"
    return sorted(msg_serials), sorted(keys), any_objects


def _int(value: bytes | None, default: int) -> int:
    return default if value is None else int(value)


def _objects(flat: list[bytes]) -> dict[str, ObjectState]:
    """A script's ``HGETALL`` of live objects (id, state, id, state, ...)."""
    pairs = iter(flat)
    return {oid.decode(): _object(body) for oid, body in zip(pairs, pairs, strict=True)}


class RedisStore(Store):
    """The Store in Redis, shared by every node (see the module docstring).

    Args:
        url: ``redis://host:port/db`` or ``redis+sentinel://host:port[,...]/service/db``
            (see ``redis_clients``), with an optional ``?prefix=name`` (default
            ``roomcast``) that every key and pub/sub channel starts with.
        options: Dedup window and size limits.
    """

    bus: RedisBus

    def __init__(self, url: str, options: StoreOptions | None = None) -> None:
        client = redis_client(url)
        self.url, prefix = client.url, client.prefix
        self.options = options or StoreOptions()
        self.k = Keys(prefix)
        self.redis: Any = client.redis
        self._cluster = client.cluster
        self.bus = RedisBus(self.redis, prefix, sharded=client.cluster)
        self.bus.read_log = self.read_events
        self.bus.read_head = self._head
        self._read_state = self.redis.register_script(LOAD)
        self._commit = self.redis.register_script(COMMIT)
        self._snapshot = self.redis.register_script(SNAPSHOT)
        self._read_events = self.redis.register_script(READ_EVENTS)
        self._purge = self.redis.register_script(PURGE)
        self._claim = self.redis.register_script(CLAIM)
        self._presence_remove = self.redis.register_script(PRESENCE_REMOVE)
        self._presence_adopt = self.redis.register_script(PRESENCE_ADOPT)
        self._keep_session = self.redis.register_script(KEEP_SESSION)
        self._node_ttls: dict[str, float] = {}  # node → the ttl of its heartbeats
        self._clock_offset_ms: int | None = None  # Redis's clock minus this machine's
        self._counter = self.redis.register_script(COUNTER)
        self._queue: list[_Work] = []
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._accepting = False
        self._where = client.where  # addresses only: the URL may hold a password
        self._down = False  # the last request could not reach Redis (said once in the log)
        self._unlisted: set[str] = set()  # channels whose listing failed: retried

    # ------------------------------------------------------------ lifecycle

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Redis errors become 50300, with where and what."""
        from redis.exceptions import (
            ConnectionError,
            RedisClusterException,
            RedisError,
            TimeoutError,
        )

        try:
            yield
        # A cluster client's own errors: no node answers, a slot that no master holds.
        except (ConnectionError, TimeoutError, OSError, RedisClusterException) as exc:
            if not self._down:  # said once per outage, however many requests fail meanwhile
                self._down = True
                log.warning(
                    "the Redis store at %s is unreachable (%s): reads and writes are refused "
                    "with 50300 until it answers again",
                    self._where,
                    describe(exc),
                )
            raise Unavailable(f"the Redis store at {self._where} failed: {describe(exc)}") from exc
        except RedisError as exc:
            raise Unavailable(f"the Redis store at {self._where} failed: {describe(exc)}") from exc
        if self._down:
            self._down = False
            log.warning("the Redis store at %s is reachable again", self._where)

    async def open(self) -> None:
        if self._writer is not None:
            return
        if not self._cluster:
            await self._refuse_cluster_node()
        await self.ping()
        self._wake = asyncio.Event()
        self._accepting = True
        self._writer = asyncio.create_task(self._write_loop(), name="roomcast-redis-writer")

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
                f"{self._where} is a node of a Redis Cluster: use "
                "redis+cluster://host:port[,host:port...] (a redis:// URL names one server)"
            )

    async def aclose(self) -> None:
        writer, self._writer = self._writer, None
        self._accepting = False
        if writer is not None:
            assert self._wake is not None
            self._wake.set()  # the writer drains what was accepted, then stops
            with contextlib.suppress(asyncio.CancelledError):
                await writer
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

    # ------------------------------------------------------------ writes

    def submit(
        self, event: Event, *, idempotency_key: str | None = None
    ) -> asyncio.Future[Appended]:
        return self._submit([event], [idempotency_key], batch=False)

    def _submit(
        self, events: Sequence[Event], keys: Sequence[str | None], *, batch: bool
    ) -> asyncio.Future[Any]:
        if not self._accepting or self._wake is None:
            raise Unavailable(f"the Redis store at {self._where} is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Work(events, keys, future, batch))
        self._wake.set()
        return future

    async def append(self, event: Event, *, idempotency_key: str | None = None) -> Appended:
        result: Appended = await self.submit(event, idempotency_key=idempotency_key)
        return result

    async def append_batch(
        self, events: Sequence[Event], keys: Sequence[str | None]
    ) -> list[Appended]:
        check_batch(events, keys)
        if not events:
            return []
        results: list[Appended] = await self._submit(list(events), list(keys), batch=True)
        return results

    async def _write_loop(self) -> None:
        assert self._wake is not None
        while self._accepting or self._queue:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
                groups: dict[str, list[_Work]] = {}
                for work in batch:
                    groups.setdefault(work.events[0].channel, []).append(work)
                await asyncio.gather(*(self._write_group(ch, ws) for ch, ws in groups.items()))

    async def _write_group(self, channel: str, works: list[_Work]) -> None:
        """Compute and commit one channel's writes, retrying when another node wrote first."""
        try:
            for attempt in range(_MAX_ATTEMPTS):
                with self._errors():
                    group = await self._load(channel, works)
                    self._compute(group, works)
                    if not group.events:
                        epoch = group.epoch or ""
                        break
                    committed = await self._commit_group(group)
                if committed is not None:
                    epoch = committed
                    await self._update_indexes(group)
                    break
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
            else:
                raise Unavailable(f"too much contention on {channel!r}: try again")
        except Exception as exc:
            failure = exc if isinstance(exc, RoomcastError) else Unavailable(repr(exc))
            for work in works:
                if not work.future.done():
                    work.future.set_exception(failure)
            return
        self.bus.deliver_local(channel, epoch, [event for event, _ in group.events])
        for work in works:
            if work.future.done():
                continue
            if work.error is not None:
                work.future.set_exception(work.error)
            else:
                work.future.set_result(work.result)

    async def _load(self, channel: str, works: list[_Work]) -> _Group:
        head, _, messages_key, _, objects_key = self.k.channel(channel)
        serial_list, key_list, any_objects = _needs(works)
        keys = [head, messages_key, objects_key]
        keys += [self.k.idempotency(channel, k) for k in key_list]
        reply = await self._read_state(keys=keys, args=["1" if any_objects else "0", *serial_list])
        (epoch, serial, first, obytes), bodies, values, pairs = reply
        messages: dict[int, Message | None] = {
            s: None if body is None else _message(body)
            for s, body in zip(serial_list, bodies, strict=True)
        }
        found: dict[str, int | None] = {
            k: None if value is None else int(value)
            for k, value in zip(key_list, values, strict=True)
        }
        objects = _objects(pairs)
        group = _Group(
            channel,
            None if epoch is None else epoch.decode(),
            _int(serial, 0),
            _int(first, 1),
            _int(obytes, 0),
            messages,
            found,
            objects,
        )
        group.base_serial = group.serial
        return group

    def _compute(self, group: _Group, works: list[_Work]) -> None:
        now = now_ms()
        for work in works:
            work.result, work.error = None, None
            if not work.batch:
                # One event changes the group only after every check has passed.
                try:
                    work.result = self._apply(group, work.events[0], work.keys[0], now)
                except Exception as exc:
                    work.error = exc
                continue
            saved = group.checkpoint()
            try:
                pairs = zip(work.events, work.keys, strict=True)
                work.result = [self._apply(group, e, k, now) for e, k in pairs]
            except Exception as exc:
                group.rollback(saved)
                work.result, work.error = None, exc

    def _apply(self, group: _Group, event: Event, key: str | None, now: int) -> Appended:
        """One event against the group's state (the rules are in ``apply.sequence``)."""
        if key is not None:
            seen = group.keys.get(key)
            if seen is not None:  # the key expires in Redis: found, it is still valid
                return Appended(serial=seen, duplicate=True)
        serial = group.serial + 1
        step = sequence(
            event,
            None if event.msg_serial is UNSET else group.messages.get(event.msg_serial),
            serial=serial,
            objects=group.objects.get,
            objects_bytes=group.obytes,
            options=self.options,
            now=now,
        )
        if step is None:
            return Appended(serial=None)
        event, message, change = step.event, step.message, step.change
        body = encode_event(event)
        if change is not None:
            group.objects[change.object_id] = change.state
            group.dirty_objects[change.object_id] = change.state
            group.obytes += change.size_delta
        elif message is not None:
            group.messages[message.msg_serial] = message
            earlier = group.dirty.get(message.msg_serial)  # created earlier in this group?
            is_new = event.type == "create" or (earlier is not None and earlier[1])
            group.dirty[message.msg_serial] = (message, is_new)
        group.serial = serial
        group.events.append((event, body))
        if key is not None:
            group.keys[key] = serial
            group.new_keys[key] = serial
        return Appended(serial=serial, event=event)

    async def _commit_group(self, group: _Group) -> str | None:
        """Run the commit script; the channel's epoch, or None if another node wrote first."""
        channel = group.channel
        args: list[Any] = [
            group.base_serial,
            group.first,
            new_epoch(),
            group.serial,
            now_ms(),
            group.obytes,
            len(group.events),
            len(group.dirty),
            len(group.dirty_objects),
            len(group.new_keys),
            max(1, int(self.options.dedup_window_s * 1000)),
            bus_channel(self.k.prefix, channel),
        ]
        args += [body for _, body in group.events]
        for msg_serial, (message, is_new) in group.dirty.items():
            args += [msg_serial, _encode(message), "1" if is_new else "0"]
        for object_id, state in group.dirty_objects.items():
            args += [object_id, _encode(state)]
        args += list(group.new_keys.values())
        keys = self.k.channel(channel) + [self.k.idempotency(channel, k) for k in group.new_keys]
        reply = await self._commit(keys=keys, args=args)
        if int(reply[0]) != 1:
            return None
        return str(reply[1].decode())

    async def _update_indexes(self, group: _Group) -> None:
        """The global indexes (other hash slots): channel names and streaming messages.

        A channel is listed with its first events (names are never unlisted); a message is
        in the streaming index while it streams. A commit that changes neither (a plain
        publish to a listed channel) costs no round trip.
        """
        channel = group.channel
        listing = group.base_serial == 0 or channel in self._unlisted
        changed = [
            (msg_serial, message)
            for msg_serial, (message, is_new) in group.dirty.items()
            if message.status == "streaming" or not is_new  # a new final one was never in it
        ]
        if not listing and not changed:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                if listing:
                    pipe.zadd(self.k.channels, {channel: 0})
                for msg_serial, message in changed:
                    member = _encode((channel, msg_serial))
                    if message.status == "streaming":
                        pipe.zadd(self.k.streaming, {member: message.updated_at})
                    else:
                        pipe.zrem(self.k.streaming, member)
                await pipe.execute()
            self._unlisted.discard(channel)
        except Exception as exc:  # the events are stored; the indexes catch up later
            if listing:
                self._unlisted.add(channel)
            log.warning("could not update the indexes of %s: %r", channel, exc)

    # ------------------------------------------------------------ reads

    async def _head(self, channel: str) -> tuple[str | None, int]:
        with self._errors():
            epoch, serial = await self.redis.hmget(self.k.channel(channel)[0], "epoch", "serial")
        return (None if epoch is None else epoch.decode()), _int(serial, 0)

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
        ]
        with self._errors():
            reply = await self._snapshot(keys=self.k.channel(channel), args=args)
        epoch, serial, first, messages, has_events, events, found = reply
        snap_objects = None
        if objects:
            snap_objects = ObjectsSnapshot(
                serial=int(serial), objects=live.with_root(_objects(found))
            )
        return Snapshot(
            epoch=epoch.decode(),
            serial=int(serial),
            first_serial=int(first),
            messages=[_message(body) for body in reversed(messages) if body is not None],
            events=[_event(body) for body in events if body is not None] if has_events else None,
            objects=snap_objects,
        )

    async def read_events(self, channel: str, after: int, limit: int) -> list[Event]:
        if limit <= 0:
            return []
        with self._errors():
            bodies = await self._read_events(
                keys=self.k.channel(channel)[:2], args=[max(0, after), limit]
            )
        return [_event(body) for body in bodies if body is not None]

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
        return [_message(b) for b in bodies if b is not None], len(ids) > limit

    async def get_message(self, channel: str, msg_serial: int) -> Message | None:
        with self._errors():
            body = await self.redis.hget(self.k.channel(channel)[2], str(msg_serial))
        return None if body is None else _message(body)

    async def get_object(self, channel: str, object_id: str) -> ObjectState | None:
        with self._errors():
            body = await self.redis.hget(self.k.channel(channel)[4], object_id)
        return None if body is None else _object(body)

    async def objects(self, channel: str) -> ObjectsSnapshot:
        head, _, messages_key, _, objects_key = self.k.channel(channel)
        with self._errors():
            reply = await self._read_state(keys=[head, messages_key, objects_key], args=["1"])
        serial = reply[0][1]
        return ObjectsSnapshot(serial=_int(serial, 0), objects=live.with_root(_objects(reply[3])))

    async def _infos(self, names: list[str]) -> list[ChannelInfo]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hmget(self.k.channel(name)[0], "epoch", "serial", "updated")
            rows = await pipe.execute()
        return [
            ChannelInfo(name, epoch.decode(), int(serial), _int(updated, 0))
            for name, (epoch, serial, updated) in zip(names, rows, strict=True)
            if epoch is not None and _int(serial, 0) > 0
        ]

    async def channel_info(self, channel: str) -> ChannelInfo | None:
        with self._errors():
            found = await self._infos([channel])
        return found[0] if found else None

    async def list_channels(self, prefix: str, limit: int) -> list[ChannelInfo]:
        # Channel names are UTF-8, which never holds the byte 0xff: the range's end.
        low = b"[" + prefix.encode()
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
                    message = None if body is None else _message(body)
                    if message is None or message.status != "streaming":
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
        for _ in range(_MAX_ATTEMPTS):
            serial_raw, first_raw = await self.redis.hmget(head, "serial", "first")
            serial, first = _int(serial_raw, 0), _int(first_raw, 1)
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

    # ------------------------------------------------------------ presence and nodes

    async def presence_set(self, channel: str, member: PresenceMember, node_id: str) -> None:
        field_name = member.client_id + "\0" + member.connection_id
        held = _encode((channel, member.client_id, member.connection_id))
        with self._errors():
            until = await self._node_expiry(node_id)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hset(self.k.presence(channel), field_name, _encode((node_id, member)))
                pipe.sadd(self.k.held_by(node_id), held)
                # The node is known alive even if its heartbeat entry was lost (a flush): a
                # node that dies before its next heartbeat still has this member reaped.
                pipe.zadd(self.k.nodes, {node_id: until}, nx=True)
                await pipe.execute()

    async def presence_remove(
        self, channel: str, client_id: str, connection_id: str, *, holder: str | None = None
    ) -> bool:
        with self._errors():
            body = await self._remove_member(channel, client_id, connection_id, holder)
        return body is not None

    async def _remove_member(
        self, channel: str, client_id: str, connection_id: str, holder: str | None
    ) -> bytes | None:
        field_name = client_id + "\0" + connection_id
        body: bytes | None = await self._presence_remove(
            keys=[self.k.presence(channel)], args=[field_name, holder or ""]
        )
        if body is not None:
            node_id, _ = _held(body)
            held = _encode((channel, client_id, connection_id))
            await self.redis.srem(self.k.held_by(node_id), held)
        return body

    async def presence_adopt(
        self, channel: str, client_id: str, connection_id: str, node_id: str
    ) -> PresenceMember | None:
        field_name = client_id + "\0" + connection_id
        held = _encode((channel, client_id, connection_id))
        with self._errors():
            body = await self._presence_adopt(
                keys=[self.k.presence(channel)], args=[field_name, node_id]
            )
            if body is None:
                return None
            old_node, member = _held(body)
            until = await self._node_expiry(node_id)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.sadd(self.k.held_by(node_id), held)
                if old_node != node_id:
                    pipe.srem(self.k.held_by(old_node), held)
                pipe.zadd(self.k.nodes, {node_id: until}, nx=True)
                await pipe.execute()
        return member

    async def presence_members(self, channel: str) -> list[PresenceMember]:
        with self._errors():
            rows = await self.redis.hvals(self.k.presence(channel))
        return [_held(body)[1] for body in rows]

    async def _redis_ms(self) -> int:
        """Redis's clock: node liveness must not depend on the nodes' clocks agreeing."""
        seconds, micros = await self.redis.time()
        now = int(seconds) * 1000 + int(micros) // 1000
        self._clock_offset_ms = now - int(time.time() * 1000)
        return now

    async def _node_expiry(self, node_id: str) -> int:
        """When ``node_id``'s liveness lapses if it sends no heartbeat from now (Redis ms)."""
        ttl_ms = int(self._node_ttls.get(node_id, DEFAULT_NODE_TTL_S) * 1000)
        if self._clock_offset_ms is None:
            return await self._redis_ms() + ttl_ms
        return int(time.time() * 1000) + self._clock_offset_ms + ttl_ms

    async def node_heartbeat(self, node_id: str, ttl_s: float) -> None:
        self._node_ttls[node_id] = ttl_s
        with self._errors():
            until = await self._redis_ms() + int(ttl_s * 1000)
            await self.redis.zadd(self.k.nodes, {node_id: until})

    async def lifetime(self) -> str:
        candidate = new_epoch()
        ids: list[str] = []
        with self._errors():
            for key in await self._lifetime_keys():
                found = await self.redis.set(key, candidate, nx=True, get=True)
                ids.append(candidate if found is None else found.decode())
        return "/".join(ids)

    async def _lifetime_keys(self) -> list[str]:
        """``P:lifetime``, and on a cluster one key more on each other master: a master
        restarted without its data resets only its own slots, and the nodes must notice
        that too. (A change of the masters, as in a resharding, changes the keys and reads
        as a reset: the nodes then put back what they hold, which is harmless.)"""
        keys = [self.k.lifetime]
        if not self._cluster:
            return keys
        if self.redis.nodes_manager.default_node is None:
            await self.redis.initialize()
        masters = {node.name for node in self.redis.get_primaries()}
        owner = self.redis.nodes_manager.get_node_from_slot
        covered = {owner(self.redis.keyslot(self.k.lifetime)).name}
        tag = 0
        while covered < masters and tag < 100_000:
            key = f"{self.k.lifetime}:{{{tag}}}"
            name = owner(self.redis.keyslot(key)).name
            if name not in covered:
                covered.add(name)
                keys.append(key)
            tag += 1
        return keys

    async def reap_dead_nodes(self) -> list[tuple[str, PresenceMember]]:
        reaped: list[tuple[str, PresenceMember]] = []
        with self._errors():
            now = await self._redis_ms()
            dead = await self.redis.zrangebyscore(self.k.nodes, "-inf", f"({now}")
            for raw in dead:
                if not await self.redis.zrem(self.k.nodes, raw):
                    continue  # another node is reaping it
                reaped += await self._reap(raw.decode())
        return reaped

    async def _reap(self, node_id: str) -> list[tuple[str, PresenceMember]]:
        reaped: list[tuple[str, PresenceMember]] = []
        held_key = self.k.held_by(node_id)
        for raw in await self.redis.smembers(held_key):
            channel, client_id, connection_id = _triple(raw)
            # Only what the dead node still holds: a member that resumed elsewhere stays.
            body = await self._remove_member(channel, client_id, connection_id, node_id)
            if body is not None:
                reaped.append((channel, _held(body)[1]))
        await self.redis.delete(held_key)
        return reaped

    # ------------------------------------------------------------ claims, counters, sessions

    async def claim(self, key: str, owner: str, ttl_s: float) -> bool:
        with self._errors():
            won = await self._claim(
                keys=[self.k.claim(key)], args=[owner, max(1, int(ttl_s * 1000))]
            )
        return bool(int(won))

    async def incr_counter(self, key: str, amount: float, ttl_s: float) -> float:
        with self._errors():
            total = await self._counter(
                keys=[self.k.counter(key)], args=[repr(float(amount)), max(1, int(ttl_s * 1000))]
            )
        return float(total)

    async def save_session(self, key: str, session: ResumeSession) -> None:
        ttl_ms = int((session.expires_at - time.time()) * 1000)
        with self._errors():
            if ttl_ms <= 0:
                await self.redis.delete(self.k.session(key))
                return
            await self.redis.set(self.k.session(key), _encode(session), px=ttl_ms)

    async def keep_session(self, key: str, session: ResumeSession) -> bool:
        ttl_ms = max(1, int((session.expires_at - time.time()) * 1000))
        with self._errors():
            kept = await self._keep_session(
                keys=[self.k.session(key)], args=[_encode(session), ttl_ms]
            )
        return bool(int(kept))

    async def take_session(self, key: str) -> ResumeSession | None:
        with self._errors():
            body = await self.redis.set(
                self.k.session(key), TAKEN, px=int(TAKEN_TTL_S * 1000), get=True
            )
        if body is None or body == TAKEN:
            return None
        session = _session(body)
        return session if session.expires_at > time.time() else None

    # ------------------------------------------------------------ tests

    async def drop_prefix(self) -> int:
        """Delete every key under this store's prefix (for tests); returns how many."""
        dropped = 0
        with self._errors():
            async for key in self.redis.scan_iter(match=f"{self.k.prefix}:*", count=1000):
                dropped += await self.redis.delete(key)
        return dropped


__all__ = ["RedisStore"]
