"""Streamed messages (docs/protocol.md §2 "Rollup", §3 "Streams"): merging appends, ending
ignored cancels, and sweeping abandoned streams.

:class:`AppendRollup` merges the appends to one message that arrive within ``rollup_ms`` into
one ``append`` event before it is sequenced: a token stream costs a few events (and frames)
per second instead of one per token. The first append after a quiet window goes at once, so a
stream's first fragment has no added latency. Each append is checked against the message's
state (read once, then tracked) before it joins a merge, so one bad append never spoils the
others; the store's atomic ``admit`` still has the final word, and when it refuses a merged
append every append in it gets that error.

:class:`StreamSweeper` ends what the authors did not: a stream idle for
``stream_idle_timeout_s`` ends ``failed`` (``extras.failure = "abandoned"``), and a cancelled
stream its author did not end within ``cancel_grace_s`` ends ``cancelled``. Both are server
events (``client_id: null``). Idle time comes from the message's last event timestamp, so a
restart loses nothing; a lease (``Store.claim``) keeps one sweeper per store at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from msgspec import UNSET

from roomcast.aio import cancel_and_wait
from roomcast.backends.base import Appended, Store
from roomcast.protocol.errors import (
    Conflict,
    NotFound,
    RoomcastError,
    TooLarge,
    Unavailable,
)
from roomcast.protocol.messages import Event, Status
from roomcast.protocol.rollup import append_refusal, is_text
from roomcast.settings import Settings

log = logging.getLogger("roomcast.streams")

SWEEPER_LEASE = "stream-sweeper"
"""The claim key of the sweeper's lease (client claims always contain a NUL, so no clash)."""

FAILURE_ABANDONED = "abandoned"
"""``extras.failure`` of a stream the sweeper ended for being idle."""

_SWEEP_BATCH = 500  # messages ended per sweep and kind; the next sweep takes the rest
LINGER_S = 1.0  # an idle stream is remembered this long, for the next append


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _size(data: Any) -> int:
    return len(data.encode()) if isinstance(data, str) else 0


@dataclass(slots=True, eq=False)
class _Item:
    client_id: str | None
    data: str
    future: asyncio.Future[Appended]


@dataclass(slots=True, eq=False)
class _Stream:
    """What this node knows of one message that is being appended to."""

    channel: str
    msg_serial: int
    loaded: bool = False
    author: str | None = None
    status: str = "streaming"
    cancelled_by: str | None = None
    deleted: bool = False
    text: bool = True  # its data is text (a string, or null), which appends may add to
    size: int = 0  # bytes of data stored, plus those merged but not stored yet
    queue: list[_Item] = field(default_factory=list)  # waiting for the message to load
    merge: list[_Item] = field(default_factory=list)  # checked, waiting for the window
    merge_bytes: int = 0
    window: asyncio.TimerHandle | None = None
    loading: asyncio.Future[None] | None = None
    in_flight: int = 0
    touched: float = 0.0  # the loop time of its latest append
    linger: asyncio.TimerHandle | None = None  # forgets it once idle for LINGER_S

    @property
    def idle(self) -> bool:
        return not (self.queue or self.merge or self.in_flight or self.window or not self.loaded)


class AppendRollup:
    """Merges appends to one message within ``rollup_ms`` into one sequenced event.

    :meth:`submit` queues an append synchronously (so pipelined appends keep their order) and
    returns a future that resolves, with the stored merged event's :class:`Appended`, once
    that event is durable. Appends of one message are sequenced in the order they were
    submitted, merged or not.
    """

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.window_s = max(0.0, settings.rollup_ms) / 1000
        self.max_stream_bytes = settings.max_stream_bytes
        # A merged event stays within one message's size, whatever the window holds.
        self.max_merge_bytes = settings.max_message_bytes
        self._streams: dict[tuple[str, int], _Stream] = {}
        self._in_flight: set[asyncio.Future[Appended]] = set()
        self.events = 0  # merged append events submitted (for tests and benchmarks)
        self.appends = 0  # appends that went into them

    def submit(
        self, client_id: str | None, channel: str, msg_serial: int, data: str
    ) -> asyncio.Future[Appended]:
        """Queue one append; the future resolves once the event holding it is stored."""
        future: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        key = (channel, msg_serial)
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream(channel, msg_serial)
            stream.loading = asyncio.ensure_future(self._load(stream))
        stream.queue.append(_Item(client_id, data, future))
        stream.touched = asyncio.get_running_loop().time()
        if stream.loaded:
            self._take_queue(stream)
        return future

    async def settle(self, channel: str, msg_serial: int) -> None:
        """Sequence the appends still pending for a message (before an update, cancel or
        delete of it). Returns once they are queued in the store, ahead of what follows."""
        stream = self._streams.get((channel, msg_serial))
        if stream is None:
            return
        if not stream.loaded and stream.loading is not None:
            await asyncio.shield(stream.loading)
        if stream.queue and stream.loaded:
            self._take_queue(stream)
        if stream.merge:
            self._flush(stream)

    def flush_now(self, channel: str, msg_serial: int) -> None:
        """Store what the message's open window holds now, instead of at the window's end
        (its connection has other requests waiting behind these appends)."""
        stream = self._streams.get((channel, msg_serial))
        if stream is None or not stream.loaded:
            return
        if stream.queue:
            self._take_queue(stream)
        if stream.merge:
            self._flush(stream)

    def created(self, event: Event) -> None:
        """Know a streamed message just created here, so that its first append is checked
        and stored at once instead of after a read of the message from the store."""
        key = (event.channel, event.serial)
        if event.streaming is not True or key in self._streams:
            return
        stream = self._streams[key] = _Stream(
            event.channel,
            event.serial,
            loaded=True,
            author=event.client_id,
            text=is_text(event.data),
            size=_size(event.data),
        )
        stream.touched = asyncio.get_running_loop().time()
        self._forget(stream)  # remembered for LINGER_S, like a stream between appends

    def observe(self, event: Event) -> None:
        """Track a stored update, cancel or delete of a message being appended to here."""
        stream = self._streams.get((event.channel, event.msg_serial or 0))
        if stream is None or not stream.loaded:
            return
        if event.type == "update":
            if event.status is not UNSET and stream.status == "streaming":
                stream.status = event.status
            if event.data is not UNSET:
                stream.size = _size(event.data) + stream.merge_bytes
                stream.text = is_text(event.data)
        elif event.type == "cancel":
            stream.cancelled_by = event.client_id
        elif event.type == "delete":
            stream.size = stream.merge_bytes
            stream.deleted = True

    async def aclose(self) -> None:
        """Sequence everything pending and wait until it is stored."""
        for stream in list(self._streams.values()):
            with contextlib.suppress(Exception):
                await self.settle(stream.channel, stream.msg_serial)
        for stream in self._streams.values():
            for timer in (stream.window, stream.linger):
                if timer is not None:
                    timer.cancel()
            stream.window = stream.linger = None
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    # ------------------------------------------------------------------ internals

    async def _load(self, stream: _Stream) -> None:
        try:
            message = await self.store.get_message(stream.channel, stream.msg_serial)
            if message is None:
                raise NotFound(f"no message {stream.msg_serial} on {stream.channel}")
        except Exception as exc:
            items, stream.queue = stream.queue, []
            self._forget(stream, force=True)
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        stream.loaded = True
        stream.author = message.client_id
        stream.status = message.status
        stream.cancelled_by = message.cancelled_by
        stream.deleted = message.deleted
        stream.text = is_text(message.data)
        stream.size = _size(message.data)
        self._take_queue(stream)
        self._forget(stream)

    def _check(self, stream: _Stream, item: _Item) -> RoomcastError | None:
        """The error the store would give this append, as far as this node can tell."""
        return append_refusal(
            stream.msg_serial,
            status=stream.status,
            cancelled_by=stream.cancelled_by,
            author=stream.author,
            appender=item.client_id,
            size=stream.size + _size(item.data),
            max_stream_bytes=self.max_stream_bytes,
            deleted=stream.deleted,
            text=stream.text,
        )

    def _take_queue(self, stream: _Stream) -> None:
        """Check the queued appends and merge the good ones; flush at once if the window is
        closed (the first append of a burst goes without delay)."""
        items, stream.queue = stream.queue, []
        for item in items:
            error = self._check(stream, item)
            if error is not None:
                if not item.future.done():
                    item.future.set_exception(error)
                continue
            size = _size(item.data)
            if stream.merge and stream.merge_bytes + size > self.max_merge_bytes:
                self._flush(stream)
            stream.merge.append(item)
            stream.merge_bytes += size
            stream.size += size
            if self.window_s == 0:
                self._flush(stream)
            elif stream.window is None:
                self._flush(stream)
                self._open_window(stream)

    def _open_window(self, stream: _Stream) -> None:
        loop = asyncio.get_running_loop()
        stream.window = loop.call_later(self.window_s, self._window_end, stream)

    def _window_end(self, stream: _Stream) -> None:
        stream.window = None
        if stream.merge:
            self._flush(stream)
            self._open_window(stream)
        else:
            self._forget(stream)

    def _flush(self, stream: _Stream) -> None:
        items, stream.merge = stream.merge, []
        stream.merge_bytes = 0
        if not items:
            return
        event = Event(
            channel=stream.channel,
            serial=0,
            type="append",
            client_id=items[0].client_id,
            timestamp=0,
            msg_serial=stream.msg_serial,
            data="".join(item.data for item in items),
        )
        self.events += 1
        self.appends += len(items)
        try:
            stored = self.store.submit(event)
        except Exception as exc:
            self._stored(stream, items, None, exc)
            return
        stream.in_flight += 1
        future = asyncio.ensure_future(stored)
        self._in_flight.add(future)
        future.add_done_callback(self._in_flight.discard)
        future.add_done_callback(lambda f: self._on_stored(stream, items, f))

    def _on_stored(
        self, stream: _Stream, items: list[_Item], future: asyncio.Future[Appended]
    ) -> None:
        stream.in_flight -= 1
        if future.cancelled():
            self._stored(stream, items, None, asyncio.CancelledError())
        elif future.exception() is not None:
            self._stored(stream, items, None, future.exception())
        else:
            self._stored(stream, items, future.result(), None)

    def _stored(
        self,
        stream: _Stream,
        items: list[_Item],
        result: Appended | None,
        error: BaseException | None,
    ) -> None:
        if error is not None:
            if isinstance(error, Conflict):
                # The message ended or was cancelled elsewhere: refuse what follows too.
                stream.status = "refused"
            elif isinstance(error, TooLarge):
                stream.size = self.max_stream_bytes
            for item in items:
                if not item.future.done():
                    item.future.set_exception(error)
        else:
            for item in items:
                if not item.future.done():
                    item.future.set_result(result)  # type: ignore[arg-type]
        self._forget(stream)

    def _forget(self, stream: _Stream, *, force: bool = False) -> None:
        """Drop what this node knows of an idle message: at once if ``force`` or if it
        takes no more appends; else once no append came for ``LINGER_S``. A message streamed
        at a steady pace has a window with nothing in it now and then: it is not read from
        the store again for the next one."""
        key = (stream.channel, stream.msg_serial)
        if self._streams.get(key) is not stream or not (force or stream.idle):
            return
        if force or stream.status != "streaming" or stream.deleted or stream.cancelled_by:
            if stream.linger is not None:
                stream.linger.cancel()
                stream.linger = None
            del self._streams[key]
        elif stream.linger is None:
            loop = asyncio.get_running_loop()
            stream.linger = loop.call_later(LINGER_S, self._linger_end, stream)

    def _linger_end(self, stream: _Stream) -> None:
        stream.linger = None
        quiet_for = asyncio.get_running_loop().time() - stream.touched
        if quiet_for >= LINGER_S:
            self._forget(stream, force=stream.idle)
        elif self._streams.get((stream.channel, stream.msg_serial)) is stream:
            loop = asyncio.get_running_loop()
            stream.linger = loop.call_later(LINGER_S - quiet_for, self._linger_end, stream)


class StreamSweeper:
    """Ends streams that nobody will end: abandoned ones, and ignored cancels.

    One per node, but only the holder of the store's ``stream-sweeper`` lease sweeps, so
    several nodes on one store do not race to end the same message.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        owner: str,
        rollup: AppendRollup,
    ) -> None:
        self.store = store
        self.owner = owner
        self.rollup = rollup
        self.idle_timeout_ms = int(settings.stream_idle_timeout_s * 1000)
        self.cancel_grace_s = settings.cancel_grace_s
        # Sweep often enough that a stream ends well within timeout + 5 s.
        self.interval_s = max(0.1, min(1.0, settings.stream_idle_timeout_s / 4))
        self.lease_s = self.interval_s * 3 + 1
        self._task: asyncio.Task[None] | None = None
        self._timers: dict[tuple[str, int], asyncio.TimerHandle] = {}
        self._ending: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="roomcast-stream-sweeper")

    async def aclose(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)

    def cancelled(self, channel: str, msg_serial: int) -> None:
        """A cancel of this message was stored: end it ``cancel_grace_s`` from now unless its
        author does. (After a restart, the sweep does the same from the cancel's time.)"""
        key = (channel, msg_serial)
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(self.cancel_grace_s, self._grace_over, key)

    def _grace_over(self, key: tuple[str, int]) -> None:
        self._timers.pop(key, None)
        task = asyncio.ensure_future(self._end_if_streaming(*key))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _end_if_streaming(self, channel: str, msg_serial: int) -> None:
        message = await self.store.get_message(channel, msg_serial)
        if message is not None and message.status == "streaming":
            await self.end(channel, msg_serial, "cancelled")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.tick()
            except Unavailable as exc:  # the store says an outage once; not once a sweep
                log.debug("stream sweep failed: %s", exc)
            except Exception:
                log.exception("stream sweep failed")

    async def tick(self) -> bool:
        """Sweep if this node holds (or can take) the store's sweeper lease; False if another
        node holds it."""
        if not await self.store.claim(SWEEPER_LEASE, self.owner, self.lease_s):
            return False
        await self.sweep()
        return True

    async def sweep(self, now_ms: int | None = None) -> int:
        """End every stream past its idle timeout or its cancel grace; returns how many."""
        now = _now_ms() if now_ms is None else now_ms
        ended = 0
        idle = await self.store.streaming_messages(now - self.idle_timeout_ms, _SWEEP_BATCH)
        done: set[tuple[str, int]] = set()
        for channel, message in idle:
            done.add((channel, message.msg_serial))
            if message.cancelled_by is not None:
                ended += await self.end(channel, message.msg_serial, "cancelled")
            else:
                ended += await self.end(
                    channel, message.msg_serial, "failed", {"failure": FAILURE_ABANDONED}
                )
        grace_ms = int(self.cancel_grace_s * 1000)
        if grace_ms < self.idle_timeout_ms:
            late = await self.store.streaming_messages(now - grace_ms, _SWEEP_BATCH)
            for channel, message in late:
                if message.cancelled_by is not None and (channel, message.msg_serial) not in done:
                    ended += await self.end(channel, message.msg_serial, "cancelled")
        return ended

    async def end(
        self,
        channel: str,
        msg_serial: int,
        status: Status,
        extras: dict[str, Any] | None = None,
    ) -> int:
        """End a message as the server (``client_id: null``); 0 if someone ended it first."""
        await self.rollup.settle(channel, msg_serial)
        event = Event(
            channel=channel,
            serial=0,
            type="update",
            client_id=None,
            timestamp=0,
            msg_serial=msg_serial,
            status=status,
            extras=extras if extras is not None else UNSET,
        )
        try:
            result = await self.store.append(event)
        except (Conflict, NotFound):
            return 0  # ended (or removed) in the meantime
        if result.event is None:
            return 0
        self.rollup.observe(result.event)
        log.info("ended %s #%d as %s", channel, msg_serial, status)
        return 1


__all__ = [
    "FAILURE_ABANDONED",
    "SWEEPER_LEASE",
    "AppendRollup",
    "StreamSweeper",
]
