"""The writer task of the Redis store: it takes the queued appends, grouped by channel, and
for each channel reads its state, applies the events (``apply.apply_to_stage``) and commits
with a compare-and-set, retrying when another node wrote first (see ``redis``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from msgspec import UNSET

from roomcast.protocol.errors import RoomcastError, Unavailable
from roomcast.protocol.messages import Event, Message, ObjectState

from .apply import apply_to_stage, encode_event
from .base import AppendReport, StoreOptions
from .local import new_epoch, now_ms
from .redis import (
    COMMIT,
    LOAD,
    Keys,
    decode_message,
    encode_value,
    int_or,
    objects_from_flat,
)
from .redis_bus import bus_channel
from .redis_errors import RedisErrors

# The store's logger: logs name it, and operators filter on it.
log = logging.getLogger("roomcast.backends.redis_store")

_MAX_BATCH = 1000  # queued writes taken at once
_HEADS = 10_000  # channel heads remembered from this node's own commits
MAX_ATTEMPTS = 50  # compare-and-set attempts per channel group before giving up

Deliver = Callable[[str, str, list[Event]], None]
"""Hands a channel's committed events (with its epoch) to this node's bus."""


@dataclass(slots=True, eq=False)
class _Work:
    events: Sequence[Event]
    keys: Sequence[str | None]
    future: asyncio.Future[Any]
    batch: bool
    result: Any = None
    error: BaseException | None = None
    started: float = 0.0  # perf_counter() at submit, for a report


@dataclass(slots=True)
class _Group:
    """One channel's state as read, and the writes computed on it (one attempt)."""

    channel: str
    epoch: str | None
    serial: int
    first: int
    objects_bytes: int
    messages: dict[int, Message | None]
    keys: dict[str, int | None]
    objects: dict[str, ObjectState]
    base_serial: int = 0
    remembered: bool = False  # the head is the one this node last committed, not read
    events: list[tuple[Event, bytes]] = field(default_factory=list)
    dirty: dict[int, tuple[Message, bool]] = field(default_factory=dict)
    dirty_objects: dict[str, ObjectState] = field(default_factory=dict)
    new_keys: dict[str, int] = field(default_factory=dict)

    # As the ChannelStage of apply_to_stage.

    @property
    def head(self) -> _Group:
        return self

    def key_serial(self, key: str, now: int) -> int | None:
        return self.keys.get(key)  # the key expires in Redis: found, it is still valid

    def message(self, msg_serial: int) -> Message | None:
        return self.messages.get(msg_serial)

    def live_object(self, object_id: str) -> ObjectState | None:
        return self.objects.get(object_id)

    def encode(self, event: Event) -> bytes:
        return encode_event(event)

    def put_event(self, event: Event, body: bytes) -> None:
        self.events.append((event, body))

    def put_message(self, message: Message, *, created: bool) -> None:
        self.messages[message.msg_serial] = message
        earlier = self.dirty.get(message.msg_serial)  # created earlier in this group?
        self.dirty[message.msg_serial] = (message, created or (earlier is not None and earlier[1]))

    def put_object(self, object_id: str, state: ObjectState) -> None:
        self.objects[object_id] = state
        self.dirty_objects[object_id] = state

    def put_key(self, key: str, serial: int, expires_at: int) -> None:
        self.keys[key] = serial  # it expires by its TTL in Redis: the dedup window
        self.new_keys[key] = serial

    # Batches are all or nothing.

    def checkpoint(self) -> tuple[Any, ...]:
        return (
            self.serial,
            self.objects_bytes,
            len(self.events),
            dict(self.messages),
            dict(self.keys),
            dict(self.objects),
            dict(self.dirty),
            dict(self.dirty_objects),
            dict(self.new_keys),
        )

    def rollback(self, saved: tuple[Any, ...]) -> None:
        self.serial, self.objects_bytes, count = saved[0], saved[1], saved[2]
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


class RedisWriter:
    """The writer task, and its queue, of one :class:`~.redis_store.RedisStore`.

    Args:
        redis: The store's client.
        keys: The store's key names.
        options: What the writes apply with (dedup window, size limits).
        errors: The store's error mapping.
        deliver: Where committed events go on this node (the bus).
    """

    def __init__(
        self,
        redis: Any,
        keys: Keys,
        options: StoreOptions,
        errors: RedisErrors,
        deliver: Deliver,
    ) -> None:
        self._read_state = redis.register_script(LOAD)
        self._commit = redis.register_script(COMMIT)
        self.redis = redis
        self.k = keys
        self.options = options
        self._errors = errors
        self._deliver = deliver
        self._queue: list[_Work] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._accepting = False
        self.report: AppendReport | None = None
        self._unlisted: set[str] = set()  # channels whose listing failed: retried
        # channel → (epoch, serial, first, objects bytes) as this node last committed them:
        # a group that reads nothing else skips the read, and the commit's compare-and-set
        # finds out if another node wrote since.
        self._heads: dict[str, tuple[str, int, int, int]] = {}

    @property
    def running(self) -> bool:
        """Whether the task was started and not yet stopped."""
        return self._task is not None

    def start(self) -> None:
        """Start the task (on the running loop) and accept writes."""
        self._wake = asyncio.Event()
        self._accepting = True
        self._task = asyncio.create_task(self._write_loop(), name="roomcast-redis-writer")

    async def stop(self) -> None:
        """Refuse new writes, and return once everything accepted so far is written."""
        task, self._task = self._task, None
        self._accepting = False
        if task is not None:
            assert self._wake is not None
            self._wake.set()  # the task drains what was accepted, then stops
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def submit_events(
        self, events: Sequence[Event], keys: Sequence[str | None], *, batch: bool
    ) -> asyncio.Future[Any]:
        """See :meth:`.apply.EventQueue.submit_events`."""
        if not self._accepting or self._wake is None:
            raise Unavailable(f"the Redis store at {self._errors.where} is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        work = _Work(events, keys, future, batch)
        if self.report is not None:
            work.started = time.perf_counter()
        self._queue.append(work)
        self._wake.set()
        return future

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
            for attempt in range(MAX_ATTEMPTS):
                with self._errors():
                    group = await self._load(channel, works)
                    self._compute(group, works)
                    if not group.events:
                        epoch = group.epoch or ""
                        break
                    committed = await self._commit_group(group)
                if committed is not None:
                    epoch = committed
                    self._remember(group, epoch)
                    await self._update_indexes(group)
                    break
                self._heads.pop(channel, None)
                if not group.remembered:  # a head just read was stale: back off
                    await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
            else:
                raise Unavailable(f"too much contention on {channel!r}: try again")
        except Exception as exc:
            self._heads.pop(channel, None)
            failure = exc if isinstance(exc, RoomcastError) else Unavailable(repr(exc))
            for work in works:
                work.error = failure
            self._answer(works, stored=False)
            return
        self._deliver(channel, epoch, [event for event, _ in group.events])
        self._answer(works, stored=True)

    def _answer(self, works: list[_Work], *, stored: bool) -> None:
        """Resolve the works' futures (``stored``: their group committed), and report them."""
        report = self.report
        now = time.perf_counter()
        for work in works:
            if not work.future.done():
                if work.error is not None:
                    work.future.set_exception(work.error)
                else:
                    work.future.set_result(work.result)
            if report is not None:
                count = 0
                if stored and work.error is None:
                    results = work.result if work.batch else (work.result,)
                    count = sum(r.event is not None for r in results)
                report("append_batch" if work.batch else "append", now - work.started, count)

    def _remember(self, group: _Group, epoch: str) -> None:
        if len(self._heads) >= _HEADS:
            self._heads.clear()
        self._heads[group.channel] = (epoch, group.serial, group.first, group.objects_bytes)

    async def _load(self, channel: str, works: list[_Work]) -> _Group:
        serial_list, key_list, any_objects = _needs(works)
        remembered = self._heads.get(channel)
        if remembered is not None and not (serial_list or key_list or any_objects):
            epoch, serial, first, objects_bytes = remembered
            group = _Group(channel, epoch, serial, first, objects_bytes, {}, {}, {})
            group.base_serial, group.remembered = serial, True
            return group
        head, _, messages_key, _, objects_key = self.k.channel(channel)
        keys = [head, messages_key, objects_key]
        keys += [self.k.idempotency(channel, k) for k in key_list]
        reply = await self._read_state(keys=keys, args=["1" if any_objects else "0", *serial_list])
        (epoch, serial, first, obytes), bodies, values, pairs = reply
        messages: dict[int, Message | None] = {
            s: None if body is None else decode_message(body)
            for s, body in zip(serial_list, bodies, strict=True)
        }
        found: dict[str, int | None] = {
            k: None if value is None else int(value)
            for k, value in zip(key_list, values, strict=True)
        }
        objects = objects_from_flat(pairs)
        group = _Group(
            channel,
            None if epoch is None else epoch.decode(),
            int_or(serial, 0),
            int_or(first, 1),
            int_or(obytes, 0),
            messages,
            found,
            objects,
        )
        group.base_serial = group.serial
        return group

    def _compute(self, group: _Group, works: list[_Work]) -> None:
        now, options = now_ms(), self.options
        for work in works:
            work.result, work.error = None, None
            if not work.batch:
                # One event changes the group only after every check has passed.
                try:
                    event, key = work.events[0], work.keys[0]
                    work.result = apply_to_stage(group, event, key, options=options, now=now)
                except Exception as exc:
                    work.error = exc
                continue
            saved = group.checkpoint()
            try:
                pairs = zip(work.events, work.keys, strict=True)
                work.result = [
                    apply_to_stage(group, e, k, options=options, now=now) for e, k in pairs
                ]
            except Exception as exc:
                group.rollback(saved)
                work.result, work.error = None, exc

    async def _commit_group(self, group: _Group) -> str | None:
        """Run the commit script; the channel's epoch, or None if another node wrote first."""
        channel = group.channel
        dirty = group.dirty
        args: list[Any] = [
            group.base_serial,
            group.first,
            new_epoch(),
            group.serial,
            now_ms(),
            group.objects_bytes,
            len(group.dirty_objects),
            len(group.new_keys),
            max(1, int(self.options.dedup_window_s * 1000)),
            bus_channel(self.k.prefix, channel),
            channel,
            b"[" + b",\n".join([body for _, body in group.events]) + b"]",
            " ".join(map(str, dirty)),
            b"\n".join([encode_value(message) for message, _ in dirty.values()]),
            "".join(["1" if is_new else "0" for _, is_new in dirty.values()]),
        ]
        for object_id, state in group.dirty_objects.items():
            args += [object_id, encode_value(state)]
        args += list(group.new_keys.values())
        keys = [*self.k.channel(channel), self.k.epoch_seed(channel)]
        keys += [self.k.idempotency(channel, k) for k in group.new_keys]
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
                    member = encode_value((channel, msg_serial))
                    if message.status == "streaming" and not message.deleted:
                        pipe.zadd(self.k.streaming, {member: message.updated_at})
                    else:
                        pipe.zrem(self.k.streaming, member)
                await pipe.execute()
            self._unlisted.discard(channel)
        except Exception as exc:  # the events are stored; the indexes catch up later
            if listing:
                self._unlisted.add(channel)
            log.warning("could not update the indexes of %s: %r", channel, exc)


__all__ = ["MAX_ATTEMPTS", "Deliver", "RedisWriter"]
