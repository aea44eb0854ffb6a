"""``memory://``: the whole Store in this process's memory. For tests; nothing survives a
restart (each start is a new epoch)."""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

from roomcast.protocol import objects as live
from roomcast.protocol.errors import BadRequest
from roomcast.protocol.messages import Event, Message, ObjectsSnapshot, ObjectState

from .apply import ChannelHead, apply_to_stage
from .base import REPLAY_PAGE, Appended, ChannelInfo, Snapshot, Store, StoreOptions
from .local import LocalBus, LocalEphemeralState, channel_epoch, new_epoch, now_ms


@dataclass(slots=True)
class _Log(ChannelHead):
    """One channel, and its :class:`~.apply.ChannelStage`: events apply to it in place."""

    events: list[Event] = field(default_factory=list)  # events[i].serial == first_serial + i
    order: list[int] = field(default_factory=list)  # msg_serials, ascending
    messages: dict[int, Message] = field(default_factory=dict)
    keys: dict[str, tuple[int, int]] = field(default_factory=dict)  # id → (serial, expires ms)
    objects: dict[str, ObjectState] = field(default_factory=dict)

    @property
    def head(self) -> _Log:
        return self

    def key_serial(self, key: str, now: int) -> int | None:
        seen = self.keys.get(key)
        return seen[0] if seen is not None and seen[1] > now else None

    def message(self, msg_serial: int) -> Message | None:
        return self.messages.get(msg_serial)

    def live_object(self, object_id: str) -> ObjectState | None:
        return self.objects.get(object_id)

    def encode(self, event: Event) -> bytes:
        return b""  # the log keeps the Event itself

    def put_event(self, event: Event, body: bytes) -> None:
        self.events.append(event)
        self.updated_at = event.timestamp

    def put_message(self, message: Message, *, created: bool) -> None:
        if created:
            self.order.append(message.msg_serial)
        self.messages[message.msg_serial] = message

    def put_object(self, object_id: str, state: ObjectState) -> None:
        self.objects[object_id] = state

    def put_key(self, key: str, serial: int, expires_at: int) -> None:
        self.keys[key] = (serial, expires_at)


class MemoryStore(LocalEphemeralState, Store):
    bus: LocalBus

    def __init__(self, bus: LocalBus, options: StoreOptions | None = None) -> None:
        super().__init__()
        self.bus = bus
        self.options = options or StoreOptions()
        self._logs: dict[str, _Log] = {}  # channels with events (a refused one leaves none)
        self._epoch_seed = new_epoch()  # this process's memory: each start is a new epoch

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    def _log(self, channel: str) -> _Log:
        log = self._logs.get(channel)
        if log is None:
            log = self._logs[channel] = _Log(epoch=channel_epoch(self._epoch_seed, channel))
        return log

    def _apply(self, event: Event, key: str | None, now: int) -> Appended:
        log = self._log(event.channel)
        try:
            return apply_to_stage(log, event, key, options=self.options, now=now)
        finally:
            if log.serial == 0:
                del self._logs[event.channel]  # nothing was stored: nothing is kept

    async def append(self, event: Event, *, idempotency_key: str | None = None) -> Appended:
        result = self._apply(event, idempotency_key, now_ms())
        if result.event is not None:
            self.bus.emit(event.channel, [result.event])
        return result

    def submit(
        self, event: Event, *, idempotency_key: str | None = None
    ) -> asyncio.Future[Appended]:
        future: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        try:
            result = self._apply(event, idempotency_key, now_ms())
        except Exception as exc:
            future.set_exception(exc)
            return future
        if result.event is not None:
            self.bus.emit(event.channel, [result.event])
        future.set_result(result)
        return future

    async def append_batch(
        self, events: Sequence[Event], keys: Sequence[str | None]
    ) -> list[Appended]:
        if len({e.channel for e in events}) > 1:
            raise BadRequest("a batch must be for one channel")
        if not events:
            return []
        now = now_ms()
        # All or nothing: if an event is refused, put the log back as it was.
        log_channel = events[0].channel
        log = self._log(log_channel)
        saved = (log.serial, log.updated_at, len(log.events), len(log.order), log.objects_bytes)
        messages, idempotency, objects = dict(log.messages), dict(log.keys), dict(log.objects)
        try:
            results = [self._apply(e, k, now) for e, k in zip(events, keys, strict=True)]
        except BaseException:
            log.serial, log.updated_at, log.objects_bytes = saved[0], saved[1], saved[4]
            del log.events[saved[2] :], log.order[saved[3] :]
            log.messages, log.keys, log.objects = messages, idempotency, objects
            if log.serial == 0:
                self._logs.pop(log_channel, None)
            raise
        stored = [r.event for r in results if r.event is not None]
        if stored:
            self.bus.emit(stored[0].channel, stored)
        return results

    async def snapshot(
        self,
        channel: str,
        *,
        from_serial: int | None,
        rewind: int,
        replay_limit: int = REPLAY_PAGE,
        objects: bool = False,
    ) -> Snapshot:
        log = self._logs.get(channel)
        if log is None:  # no events: a read stores nothing (the first event fixes the epoch)
            log = _Log(epoch=channel_epoch(self._epoch_seed, channel))
        events = None
        if from_serial is not None and log.first_serial - 1 <= from_serial <= log.serial:
            start = from_serial + 1 - log.first_serial
            events = log.events[start : start + replay_limit]
        messages = [log.messages[s] for s in log.order[-rewind:]] if rewind > 0 else []
        return Snapshot(
            epoch=log.epoch,
            serial=log.serial,
            first_serial=log.first_serial,
            messages=messages,
            events=events,
            objects=self._objects(log) if objects else None,
        )

    @staticmethod
    def _objects(log: _Log) -> ObjectsSnapshot:
        return ObjectsSnapshot(serial=log.serial, objects=live.with_root(log.objects))

    async def get_object(self, channel: str, object_id: str) -> ObjectState | None:
        log = self._logs.get(channel)
        return None if log is None else log.objects.get(object_id)

    async def objects(self, channel: str) -> ObjectsSnapshot:
        log = self._logs.get(channel)
        if log is None:
            return ObjectsSnapshot(serial=0, objects=live.with_root({}))
        return self._objects(log)

    async def read_events(self, channel: str, after: int, limit: int) -> list[Event]:
        log = self._logs.get(channel)
        if log is None:
            return []
        start = max(0, after + 1 - log.first_serial)
        return log.events[start : start + limit]

    async def history(
        self, channel: str, *, before: int | None, after: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        log = self._logs.get(channel)
        if log is None:
            return [], False
        if after is not None:
            start = bisect.bisect_right(log.order, after)
            chosen = log.order[start : start + limit]
            more = start + limit < len(log.order)
        else:
            end = len(log.order) if before is None else bisect.bisect_left(log.order, before)
            chosen = log.order[max(0, end - limit) : end]
            more = end - limit > 0
        return [log.messages[s] for s in chosen], more

    async def get_message(self, channel: str, msg_serial: int) -> Message | None:
        log = self._logs.get(channel)
        return None if log is None else log.messages.get(msg_serial)

    async def channel_info(self, channel: str) -> ChannelInfo | None:
        log = self._logs.get(channel)
        if log is None or log.serial == 0:
            return None
        return ChannelInfo(channel, log.epoch, log.serial, log.updated_at)

    async def list_channels(self, prefix: str, limit: int, after: str = "") -> list[ChannelInfo]:
        names = sorted(
            n for n, log in self._logs.items() if log.serial and n.startswith(prefix) and n > after
        )
        return [
            ChannelInfo(n, self._logs[n].epoch, self._logs[n].serial, self._logs[n].updated_at)
            for n in names[:limit]
        ]

    async def streaming_messages(self, idle_since_ms: int, limit: int) -> list[tuple[str, Message]]:
        found: list[tuple[str, Message]] = []
        for channel, log in self._logs.items():
            for message in log.messages.values():
                # A deleted message takes no more changes: nobody can end it.
                streaming = message.status == "streaming" and not message.deleted
                if streaming and message.updated_at < idle_since_ms:
                    found.append((channel, message))
        found.sort(key=lambda item: item[1].updated_at)
        return found[:limit]

    async def purge(self, now_ms: int, retention_ms: int) -> int:
        dropped = 0
        for log in self._logs.values():
            log.keys = {k: v for k, v in log.keys.items() if v[1] > now_ms}
            if retention_ms <= 0:
                continue
            cutoff = now_ms - retention_ms
            keep = 0
            while keep < len(log.events) and log.events[keep].timestamp < cutoff:
                keep += 1
            if keep:
                del log.events[:keep]
                log.first_serial += keep
                dropped += keep
                while log.order and log.messages[log.order[0]].timestamp < cutoff:
                    del log.messages[log.order.pop(0)]
        return dropped
