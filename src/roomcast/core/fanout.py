"""The node's fan-out: who reads which channel here, and handing them what the Bus brings.

:class:`FanOut` is the Bus's sink on this node. It keeps the subscribers of each channel,
encodes each event once per wire format for all of them, and asks each to write what it
queued once per turn of the event loop (a subscriber with nothing queued writes live events
at once). A :class:`Subscriber` is anything the fan-out
delivers to: a WebSocket connection, an SSE stream, and every later transport; they all
build on :class:`~roomcast.core.subscriber.SubscriberCore`, which owns the rules of
delivery. This module names everything the fan-out calls on them, so nothing probes a
subscriber for a method or branches on its type.

One subscriber's failure never costs another an event. Each event is encoded for every
format its readers use before any of them gets it; if it cannot be (input checks at the door
should make that impossible), that is logged with the channel and serial, and the readers of
that format are closed with 1012 to attach again from their last serial, which reads the
event from the log: a gap in a gap-free stream would go unnoticed, a close does not. A
presence change is state too and is handled the same way; a signal that cannot be encoded is
only logged (a signal is never replayed). A subscriber whose ``deliver`` raises is closed
(1012) the same way, and the others still get the event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from roomcast.backends.base import REPLAY_PAGE, Snapshot, Store
from roomcast.protocol.errors import Conflict
from roomcast.protocol.messages import Attached, Event, PresenceEvent, Reply, SignalEvent
from roomcast.settings import Settings

from .snapshots import SharedSnapshots

log = logging.getLogger("roomcast.fanout")

UNENCODABLE = "an event could not be encoded in this connection's format: attach again"


class Framing(Protocol):
    """How a transport frames messages: one (``encode``) and a batch of them (``join``).

    The fan-out encodes each event once per ``format`` for all subscribers of that format.
    A WebSocket's :class:`~roomcast.protocol.codec.Codec` is one; SSE has its own.
    """

    @property
    def format(self) -> str: ...

    @property
    def heartbeat(self) -> bytes:
        """``encode(Heartbeat())``, made once."""
        ...

    def encode(self, message: Reply) -> bytes: ...

    def join(self, frames: Sequence[bytes]) -> bytes: ...


class Subscriber(Protocol):
    """What the fan-out calls on a reader of channels.

    ``deliver`` gets the live events of a channel the subscriber is subscribed to, each
    already encoded with ``codec`` (once for every subscriber of that format);
    ``deliver_ephemeral`` gets presence and signal messages. Neither may block. ``flush``
    writes what was queued in this turn of the event loop; ``send_heartbeat`` is called when
    nothing was sent for ``heartbeat_s``; ``reset`` ends the subscriber for its client to
    attach again (the channel's log started over).
    """

    last_sent: float

    @property
    def codec(self) -> Framing: ...

    def deliver(self, channel: str, events: Sequence[Event], frames: Sequence[bytes]) -> None: ...

    def deliver_ephemeral(self, channel: str, frame: bytes) -> None: ...

    def flush(self) -> None: ...

    def send_heartbeat(self) -> None: ...

    def reset(self, reason: str) -> None: ...


@dataclass(slots=True)
class NodeStats:
    """Counters the fan-out keeps as plain integers; ``/metrics`` reads them when scraped."""

    deliveries: int = 0  # event frames handed to subscribers
    slow_consumers: int = 0  # subscribers dropped for a backlog over ``outbound_queue``


@dataclass(slots=True)
class AttachResult:
    """What the ``attached`` reply needs, read consistently as of ``attached.serial``.

    ``replay`` is the first page of events after ``from_serial``; when it ends before
    ``attached.serial``, the rest is read with :meth:`FanOut.replay_page`.
    """

    attached: Attached
    replay: Sequence[Event]
    discontinuity: str | None


class FanOut:
    """The subscribers of this node, by channel; the sink of the store's Bus."""

    def __init__(
        self, store: Store, settings: Settings, spawn: Callable[[Awaitable[Any]], Any]
    ) -> None:
        self.store = store
        self.settings = settings
        self.spawn = spawn  # runs a task the node waits for at shutdown
        self.stats = NodeStats()
        self.readers: set[Subscriber] = set()  # every open subscriber, for heartbeats
        self._channels: dict[str, set[Subscriber]] = {}
        self._dirty: list[Subscriber] = []
        self.snapshots = SharedSnapshots()
        # Set by the node: puts back what a store reset lost, if the store was reset.
        self.check_store: Callable[[], Awaitable[None]] | None = None
        store.bus.bind(self)

    # ------------------------------------------------------------------ subscribers

    def open(self, subscriber: Subscriber) -> None:
        """A subscriber starts: it gets heartbeats when idle."""
        self.readers.add(subscriber)

    def close(self, subscriber: Subscriber) -> None:
        self.readers.discard(subscriber)

    def subscribe(self, subscriber: Subscriber, channel: str) -> None:
        self._channels.setdefault(channel, set()).add(subscriber)

    def unsubscribe(self, subscriber: Subscriber, channel: str) -> None:
        subscribers = self._channels.get(channel)
        if subscribers is not None:
            subscribers.discard(subscriber)
            if not subscribers:
                del self._channels[channel]
                self.snapshots.forget(channel)
                self.spawn(self.store.bus.unsubscribe(channel))

    def occupancy(self, channel: str) -> int:
        return len(self._channels.get(channel, ()))

    @property
    def subscribed_channels(self) -> int:
        """Channels with at least one subscriber on this node."""
        return len(self._channels)

    def flush_soon(self, subscriber: Subscriber) -> None:
        """Have ``subscriber`` write its queue once the current turn of the event loop is over."""
        self._dirty.append(subscriber)
        if len(self._dirty) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for subscriber in dirty:
            subscriber.flush()

    def beat(self, now: float) -> None:
        """Heartbeats for the subscribers that sent nothing for ``heartbeat_s``."""
        self.snapshots.trim(now)
        heartbeat_s = self.settings.heartbeat_s
        for subscriber in list(self.readers):
            if now - subscriber.last_sent >= heartbeat_s:
                subscriber.send_heartbeat()

    def snapshot(
        self, channel: str, *, from_serial: int | None, rewind: int, objects: bool
    ) -> Awaitable[Snapshot]:
        """The store's snapshot of ``channel`` for an attach already subscribed here,
        shared with the attaches before it that no hand-off of an event separates from it
        (:mod:`roomcast.core.snapshots`)."""
        return self.snapshots.get(
            channel,
            (from_serial, rewind, objects),
            lambda: self.store.snapshot(
                channel, from_serial=from_serial, rewind=rewind, objects=objects
            ),
        )

    async def replay_page(self, channel: str, after: int, until: int) -> Sequence[Event]:
        """The next events after ``after`` and up to ``until``, for a client catching up.

        Raises :class:`Conflict` if retention removed events since the replay began.
        """
        events = await self.store.read_events(channel, after, min(REPLAY_PAGE, until - after))
        if not events or events[0].serial != after + 1:
            raise Conflict(f"events after {after} were removed by retention during the replay")
        return [e for e in events if e.serial <= until]

    # ------------------------------------------------------------------ bus sink

    def on_events(self, channel: str, events: Sequence[Event]) -> None:
        self.snapshots.forget(channel)  # before the early return: a later attach must read anew
        subscribers = self._channels.get(channel)
        if not subscribers:
            return
        self.stats.deliveries += len(events) * len(subscribers)
        encoded: dict[str, list[bytes] | None] = {}
        for subscriber in tuple(subscribers):
            frames = _frames(encoded, subscriber.codec, channel, events)
            try:
                if frames is None:
                    subscriber.reset(UNENCODABLE)
                else:
                    subscriber.deliver(channel, events, frames)
            except Exception:
                _failed(subscriber, channel)

    def on_presence(self, event: PresenceEvent) -> None:
        self._fan_out_ephemeral(event.channel, event, state=True)

    def on_signal(self, event: SignalEvent) -> None:
        self._fan_out_ephemeral(event.channel, event, state=False)

    def _fan_out_ephemeral(
        self, channel: str, event: PresenceEvent | SignalEvent, *, state: bool
    ) -> None:
        """A presence change (``state``: a reader that misses it attaches again) or a signal
        (one that cannot be encoded is dropped)."""
        subscribers = self._channels.get(channel)
        if not subscribers:
            return
        encoded: dict[str, list[bytes] | None] = {}
        for subscriber in tuple(subscribers):
            frames = _frames(encoded, subscriber.codec, channel, (event,))
            try:
                if frames is not None:
                    subscriber.deliver_ephemeral(channel, frames[0])
                elif state:
                    subscriber.reset(UNENCODABLE)
            except Exception:
                _failed(subscriber, channel)

    def on_epoch(self, channel: str, epoch: str) -> None:
        """The store's log of ``channel`` started over under ``epoch`` (a shared store lost
        its data). Subscribers here hold serials of the old log: they get nothing of the new
        one and end (a WebSocket with 1012) to attach again from their serial and epoch,
        which gives them ``discontinuity``, then the new log's events.

        They end once :attr:`check_store` has looked whether the whole store was reset and
        put back what this node holds there (their resume sessions, which they then find).
        Ended at once, a client that came back before the node's next look would be ended
        a second time by it."""
        self.snapshots.forget(channel)
        stale = self._channels.get(channel)
        if stale:
            self._channels[channel] = set()
            self.spawn(self._end_stale(channel, tuple(stale)))

    async def _end_stale(self, channel: str, stale: Sequence[Subscriber]) -> None:
        if self.check_store is not None:
            try:
                await self.check_store()
            except Exception as exc:
                log.warning("could not look whether the store was reset: %s", exc)
        for subscriber in stale:
            subscriber.reset(f"the log of {channel} was reset: attach again")

    def reattach_all(self, reason: str) -> None:
        """Have every subscriber here attach again (the store lost its data)."""
        self.snapshots.clear()
        for channel in list(self._channels):
            self._reset(channel, reason)

    def _reset(self, channel: str, reason: str) -> None:
        self.snapshots.forget(channel)
        for subscriber in tuple(self._channels.get(channel, ())):
            subscriber.reset(reason)


def _frames(
    encoded: dict[str, list[bytes] | None],
    codec: Framing,
    channel: str,
    messages: Sequence[Event | PresenceEvent | SignalEvent],
) -> list[bytes] | None:
    """``messages`` in ``codec``'s format, encoded once per format whoever asks first; None
    if they cannot be, which costs only that format's readers."""
    if codec.format in encoded:
        return encoded[codec.format]
    frames = encoded[codec.format] = _encode_all(codec, channel, messages)
    return frames


def _encode_all(
    codec: Framing, channel: str, messages: Sequence[Event | PresenceEvent | SignalEvent]
) -> list[bytes] | None:
    """``messages`` encoded by ``codec``, or None (logged) if one of them cannot be."""
    frames = []
    for message in messages:
        try:
            frames.append(codec.encode(message))
        except Exception:
            serial = getattr(message, "serial", None)
            log.exception(
                "cannot encode %s of %s (serial %s) as %s: not delivered in that format",
                type(message).__name__,
                channel,
                serial,
                codec.format,
            )
            return None
    return frames


def _failed(subscriber: Subscriber, channel: str) -> None:
    """A subscriber raised while it was handed a message: close it (1012) to attach again."""
    log.exception("delivery on %s failed: the subscriber attaches again", channel)
    try:
        subscriber.reset("delivery failed: attach again")
    except Exception:
        log.exception("closing the subscriber failed too")


__all__ = ["AttachResult", "FanOut", "Framing", "NodeStats", "Subscriber"]
