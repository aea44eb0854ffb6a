"""A Store that times another one: how long appends and reads take, and how many events
were sequenced, reported to an observer (the server's ``/metrics``).

It only delegates: every rule stays in the wrapped store, and it passes the same contract
suite.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import Protocol

from roomcast.protocol.messages import Event, Message, ObjectsSnapshot, ObjectState, PresenceMember

from .base import REPLAY_PAGE, Appended, AppendReport, ChannelInfo, ResumeSession, Snapshot, Store


class StoreObserver(Protocol):
    """What :class:`MeasuredStore` reports to. Called on the event loop, once per call."""

    def appended(self, op: str, seconds: float, events: int) -> None:
        """An append (``op`` = ``append`` or ``append_batch``) that stored ``events``."""

    def read(self, op: str, seconds: float) -> None:
        """A read of the log or of messages (``snapshot``, ``history``, ...)."""


class MeasuredStore(Store):
    """Delegates to ``inner`` and reports the latency of each append and read.

    Failed calls are timed too: a store that fails slowly should show in the histogram.
    A store that reports its own appends (:meth:`Store.report_appends`: the queued ones)
    reports them to the observer directly, from submit to answer.
    """

    def __init__(self, inner: Store, observer: StoreObserver) -> None:
        self.inner = inner
        self.bus = inner.bus
        self._observer = observer
        # A queued store reports its appends itself, once per commit: no timing wrapper
        # and no callback per write here (tens of thousands of publishes a second).
        self._reported = inner.report_appends(observer.appended)

    async def open(self) -> None:
        await self.inner.open()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def ping(self) -> None:
        await self.inner.ping()

    def report_appends(self, report: AppendReport) -> bool:
        return False  # it reports to its own observer

    # ----------------------------------------------------------------- the log

    async def append(self, event: Event, *, idempotency_key: str | None = None) -> Appended:
        if self._reported:
            return await self.inner.append(event, idempotency_key=idempotency_key)
        start = time.perf_counter()
        stored = 0
        try:
            result = await self.inner.append(event, idempotency_key=idempotency_key)
            stored = 0 if result.event is None else 1
            return result
        finally:
            self._observer.appended("append", time.perf_counter() - start, stored)

    def submit(self, event: Event, *, idempotency_key: str | None = None) -> Awaitable[Appended]:
        if self._reported:
            return self.inner.submit(event, idempotency_key=idempotency_key)
        start = time.perf_counter()
        submitted = self.inner.submit(event, idempotency_key=idempotency_key)
        future = submitted if asyncio.isfuture(submitted) else asyncio.ensure_future(submitted)

        def observe(done: asyncio.Future[Appended]) -> None:
            ok = not done.cancelled() and done.exception() is None
            stored = 1 if ok and done.result().event is not None else 0
            self._observer.appended("append", time.perf_counter() - start, stored)

        future.add_done_callback(observe)
        return future

    async def append_batch(
        self, events: Sequence[Event], keys: Sequence[str | None]
    ) -> list[Appended]:
        if self._reported:
            return await self.inner.append_batch(events, keys)
        start = time.perf_counter()
        stored = 0
        try:
            results = await self.inner.append_batch(events, keys)
            stored = sum(r.event is not None for r in results)
            return results
        finally:
            self._observer.appended("append_batch", time.perf_counter() - start, stored)

    async def snapshot(
        self,
        channel: str,
        *,
        from_serial: int | None,
        rewind: int,
        replay_limit: int = REPLAY_PAGE,
        objects: bool = False,
    ) -> Snapshot:
        start = time.perf_counter()
        try:
            return await self.inner.snapshot(
                channel,
                from_serial=from_serial,
                rewind=rewind,
                replay_limit=replay_limit,
                objects=objects,
            )
        finally:
            self._observer.read("snapshot", time.perf_counter() - start)

    async def read_events(self, channel: str, after: int, limit: int) -> list[Event]:
        start = time.perf_counter()
        try:
            return await self.inner.read_events(channel, after, limit)
        finally:
            self._observer.read("read_events", time.perf_counter() - start)

    async def history(
        self, channel: str, *, before: int | None, after: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        start = time.perf_counter()
        try:
            return await self.inner.history(channel, before=before, after=after, limit=limit)
        finally:
            self._observer.read("history", time.perf_counter() - start)

    async def get_message(self, channel: str, msg_serial: int) -> Message | None:
        start = time.perf_counter()
        try:
            return await self.inner.get_message(channel, msg_serial)
        finally:
            self._observer.read("get_message", time.perf_counter() - start)

    async def get_object(self, channel: str, object_id: str) -> ObjectState | None:
        start = time.perf_counter()
        try:
            return await self.inner.get_object(channel, object_id)
        finally:
            self._observer.read("get_object", time.perf_counter() - start)

    async def objects(self, channel: str) -> ObjectsSnapshot:
        start = time.perf_counter()
        try:
            return await self.inner.objects(channel)
        finally:
            self._observer.read("objects", time.perf_counter() - start)

    async def channel_info(self, channel: str) -> ChannelInfo | None:
        start = time.perf_counter()
        try:
            return await self.inner.channel_info(channel)
        finally:
            self._observer.read("channel_info", time.perf_counter() - start)

    async def list_channels(self, prefix: str, limit: int, after: str = "") -> list[ChannelInfo]:
        start = time.perf_counter()
        try:
            return await self.inner.list_channels(prefix, limit, after)
        finally:
            self._observer.read("list_channels", time.perf_counter() - start)

    async def streaming_messages(self, idle_since_ms: int, limit: int) -> list[tuple[str, Message]]:
        return await self.inner.streaming_messages(idle_since_ms, limit)

    async def purge(self, now_ms: int, retention_ms: int) -> int:
        return await self.inner.purge(now_ms, retention_ms)

    # ----------------------------------------------------------------- ephemeral state

    async def presence_set(self, channel: str, member: PresenceMember, node_id: str) -> None:
        await self.inner.presence_set(channel, member, node_id)

    async def presence_remove(
        self, channel: str, client_id: str, connection_id: str, *, holder: str | None = None
    ) -> bool:
        return await self.inner.presence_remove(channel, client_id, connection_id, holder=holder)

    async def presence_adopt(
        self, channel: str, client_id: str, connection_id: str, node_id: str
    ) -> PresenceMember | None:
        return await self.inner.presence_adopt(channel, client_id, connection_id, node_id)

    async def presence_members(self, channel: str) -> list[PresenceMember]:
        return await self.inner.presence_members(channel)

    async def node_heartbeat(self, node_id: str, ttl_s: float) -> None:
        await self.inner.node_heartbeat(node_id, ttl_s)

    async def lifetime(self) -> str:
        return await self.inner.lifetime()

    async def reap_dead_nodes(self) -> list[tuple[str, PresenceMember]]:
        return await self.inner.reap_dead_nodes()

    async def claim(self, key: str, owner: str, ttl_s: float) -> bool:
        return await self.inner.claim(key, owner, ttl_s)

    async def incr_counter(self, key: str, amount: float, ttl_s: float) -> float:
        return await self.inner.incr_counter(key, amount, ttl_s)

    async def change_set(self, key: str, member: str, *, present: bool, ttl_s: float) -> None:
        await self.inner.change_set(key, member, present=present, ttl_s=ttl_s)

    async def set_members(self, key: str) -> set[str]:
        return await self.inner.set_members(key)

    async def save_session(self, key: str, session: ResumeSession) -> None:
        await self.inner.save_session(key, session)

    async def keep_session(self, key: str, session: ResumeSession) -> bool:
        return await self.inner.keep_session(key, session)

    async def take_session(self, key: str) -> ResumeSession | None:
        return await self.inner.take_session(key)


__all__ = ["MeasuredStore", "StoreObserver"]
