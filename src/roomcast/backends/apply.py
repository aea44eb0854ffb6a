"""The step that applies one event to its channel, written once for every Store.

The whole step is :func:`apply_to_stage`: the idempotency check, the channel's rules
(:func:`sequence`) and the staging of what the event changes, in that order. A store gives it
a :class:`ChannelStage`, its own view of one channel: it reads there what the event refers to
(an idempotency key, the message, the live objects, the channel's last serial) and stages
the writes in its own containers, which the store then persists its own way.
:class:`QueuedAppends` is the append side of the queued stores (SQLite, Redis), whose writer
applies what was queued; :func:`check_batch` and :func:`encode_event` are what they check
before a write changes anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
from msgspec import UNSET, structs

from roomcast.protocol import objects as live
from roomcast.protocol.errors import BadRequest
from roomcast.protocol.messages import Event, Message, ObjectState
from roomcast.protocol.rollup import admit, apply_event, check_size, message_from_create

from .base import Appended, AppendReport, StoreOptions

_encode = msgspec.json.Encoder().encode  # thread-safe: the SQLite writer thread uses it too


# gc=False: made per write, and it can hold no reference cycle, so the garbage collector
# need not track it (fewer objects for it to walk while publishes are in flight).
class Sequenced(msgspec.Struct, frozen=True, gc=False):
    """An event ready to store, and what it changes.

    ``event`` has its serial and timestamp (and, if it created a live object, that object's
    id). ``message`` is the message it created or changed, as it now stands; ``change`` is the
    live object it created or changed. An event changes one or the other.
    """

    event: Event
    message: Message | None = None
    change: live.Change | None = None


def sequence(
    event: Event,
    message: Message | None,
    *,
    serial: int,
    objects: live.Lookup,
    objects_bytes: int,
    options: StoreOptions,
    now: int,
) -> Sequenced | None:
    """Apply the channel's rules to ``event`` as if it were stored as ``serial`` at ``now``.

    Nothing is changed here, so a refused event leaves the store as it was.

    Args:
        event: The event as published.
        message: The message the event refers to by ``msg_serial``; None if it names none,
            or names one that does not exist.
        serial: The serial it takes: the channel's last serial + 1.
        objects: The channel's live objects by id (read by an object operation).
        objects_bytes: The size of the channel's live objects now.
        options: The store's size limits.
        now: The event's timestamp (ms).

    Returns:
        What to store, or None for a no-op (it takes no serial and answers ``ok``).

    Raises:
        NotFound, Conflict, TooLarge: The event cannot apply (``rollup.admit``,
            ``rollup.check_size``, ``objects.plan``).
    """
    if not admit(message, event, max_stream_bytes=options.max_stream_bytes):
        return None
    if event.type == "object":
        change = live.plan(
            live.as_op(event.op),
            serial,
            objects,
            total_bytes=objects_bytes,
            max_bytes=options.max_objects_bytes,
        )
        if change.created:
            event = structs.replace(event, object_id=change.object_id)
        return Sequenced(structs.replace(event, serial=serial, timestamp=now), change=change)
    event = structs.replace(event, serial=serial, timestamp=now)
    if event.type == "create":
        return Sequenced(event, message=message_from_create(event))
    assert message is not None  # admit() refused an event that names no message
    changed = apply_event(message, event)
    check_size(message, changed, max_message_bytes=options.max_message_bytes)
    return Sequenced(event, message=changed)


class Head(Protocol):
    """The counters of a channel that an applied event moves."""

    serial: int  # the channel's last serial
    objects_bytes: int  # the size of its live objects


@dataclass(slots=True)
class ChannelHead:
    """A channel's own record, as the in-process stores keep it: its epoch, its last
    serial, the oldest serial still kept, when it last changed (ms), and the size of its
    live objects. It is a :class:`Head`."""

    epoch: str
    serial: int = 0
    first_serial: int = 1
    updated_at: int = 0
    objects_bytes: int = 0


class ChannelStage(Protocol):
    """One channel as a store applies events to it (see :func:`apply_to_stage`).

    The reads see what was staged before them; a store that stages into something other
    than its committed state persists the staged writes after the whole step.
    """

    @property
    def head(self) -> Head:
        """The channel's counters, which :func:`apply_to_stage` moves in place."""
        ...

    def key_serial(self, key: str, now: int) -> int | None:
        """The serial stored under the idempotency key ``key``, if it is still valid at
        ``now``; else None."""
        ...

    def message(self, msg_serial: int) -> Message | None:
        """The message ``msg_serial``, as it now stands; None if there is none."""
        ...

    def live_object(self, object_id: str) -> ObjectState | None:
        """The live object ``object_id``, as it now stands; None if there is none."""
        ...

    def encode(self, event: Event) -> bytes:
        """The event as the store keeps it; called before anything is staged, so an event
        that cannot be encoded (``BadRequest``) leaves nothing behind."""
        ...

    def put_event(self, event: Event, body: bytes) -> None:
        """Stage the stored event (``body`` from :meth:`encode`), the channel's latest."""
        ...

    def put_message(self, message: Message, *, created: bool) -> None:
        """Stage a message the event created (``created``) or changed."""
        ...

    def put_object(self, object_id: str, state: ObjectState) -> None:
        """Stage a live object the event created or changed."""
        ...

    def put_key(self, key: str, serial: int, expires_at: int) -> None:
        """Stage an idempotency key: the event's serial, until ``expires_at`` (ms)."""
        ...


def apply_to_stage(
    stage: ChannelStage, event: Event, key: str | None, *, options: StoreOptions, now: int
) -> Appended:
    """Apply ``event`` (published with the idempotency key ``key``) to its channel at ``now``.

    A repeated key answers the first publish's serial and stages nothing. Otherwise the
    event is sequenced as the channel's next serial (see :func:`sequence`) and, unless it is
    a no-op, it and what it changes are staged. A refused event stages nothing.

    Returns:
        The result the caller is answered with.

    Raises:
        NotFound, Conflict, TooLarge: The event cannot apply (see :func:`sequence`).
        BadRequest: It cannot be encoded (see :meth:`ChannelStage.encode`).
    """
    if key is not None:
        seen = stage.key_serial(key, now)
        if seen is not None:
            return Appended(serial=seen, duplicate=True)
    head = stage.head
    serial = head.serial + 1
    step = sequence(
        event,
        None if event.msg_serial is UNSET else stage.message(event.msg_serial),
        serial=serial,
        objects=stage.live_object,
        objects_bytes=head.objects_bytes,
        options=options,
        now=now,
    )
    if step is None:
        return Appended(serial=None)
    event, message, change = step.event, step.message, step.change
    body = stage.encode(event)
    if change is not None:
        stage.put_object(change.object_id, change.state)
        head.objects_bytes += change.size_delta
    elif message is not None:
        stage.put_message(message, created=event.type == "create")
    head.serial = serial
    stage.put_event(event, body)
    if key is not None:
        stage.put_key(key, serial, now + int(options.dedup_window_s * 1000))
    return Appended(serial=serial, event=event)


def check_batch(events: Sequence[Event], keys: Sequence[str | None]) -> None:
    """Refuse a batch that is not for one channel, or not with one key (or None) per event.

    Raises:
        BadRequest: Either is not so.
    """
    if len({e.channel for e in events}) > 1:
        raise BadRequest("a batch must be for one channel")
    if len(events) != len(keys):
        raise BadRequest("a batch needs one idempotency key (or None) per event")


def encode_event(event: Event) -> bytes:
    """The event as a store keeps it (JSON, the protocol's data model).

    Raises:
        BadRequest: It cannot be encoded; called before the store changes anything, so such an
            event fails alone.
    """
    try:
        return _encode(event)
    except (TypeError, OverflowError, msgspec.EncodeError) as exc:
        raise BadRequest(f"the event cannot be stored: {exc}") from None


class EventQueue(Protocol):
    """The writer of a queued store, as :class:`QueuedAppends` hands it events.

    ``report``, when set, is told of each queued write as its future is answered (see
    :meth:`.base.Store.report_appends`)."""

    report: AppendReport | None

    def submit_events(
        self, events: Sequence[Event], keys: Sequence[str | None], *, batch: bool
    ) -> asyncio.Future[Any]:
        """Queue events of one channel, with one idempotency key (or None) each.

        Returns:
            A future of their :class:`Appended` (one, or for a ``batch`` a list, all or
            nothing).

        Raises:
            Unavailable: The writer is not accepting writes (not open, or closing).
        """
        ...


class QueuedAppends:
    """``submit``, ``append`` and ``append_batch`` of a Store whose writer takes its events
    from a queue (``_writer``). Each write is queued before the first await, so callers'
    call order is the serial order."""

    _writer: EventQueue

    def report_appends(self, report: AppendReport) -> bool:
        self._writer.report = report
        return True

    def submit(
        self, event: Event, *, idempotency_key: str | None = None
    ) -> asyncio.Future[Appended]:
        future: asyncio.Future[Appended] = self._writer.submit_events(
            (event,), (idempotency_key,), batch=False
        )
        return future

    async def append(self, event: Event, *, idempotency_key: str | None = None) -> Appended:
        return await self.submit(event, idempotency_key=idempotency_key)

    async def append_batch(
        self, events: Sequence[Event], keys: Sequence[str | None]
    ) -> list[Appended]:
        check_batch(events, keys)
        if not events:
            return []
        results: list[Appended] = await self._writer.submit_events(
            list(events), list(keys), batch=True
        )
        return results


__all__ = [
    "ChannelHead",
    "ChannelStage",
    "EventQueue",
    "Head",
    "QueuedAppends",
    "Sequenced",
    "apply_to_stage",
    "check_batch",
    "encode_event",
    "sequence",
]
