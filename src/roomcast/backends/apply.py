"""The step that applies one event to its channel, written once for every Store.

A store looks up, in its own state, what the event refers to (the message, the live objects,
the channel's last serial), calls :func:`sequence`, and writes what it returns its own way.
The idempotency check stays with each store: it alone knows how its keys expire.
:func:`check_batch` and :func:`encode_event` are what the queued stores (SQLite, Redis) check
before a write changes anything.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from msgspec import structs

from roomcast.protocol import objects as live
from roomcast.protocol.errors import BadRequest
from roomcast.protocol.messages import Event, Message
from roomcast.protocol.rollup import admit, apply_event, message_from_create

from .base import StoreOptions

_encode = msgspec.json.Encoder().encode  # thread-safe: the SQLite writer thread uses it too


class Sequenced(msgspec.Struct, frozen=True):
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
        NotFound, Conflict, TooLarge: The event cannot apply (``rollup.admit``, ``objects.plan``).
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
    return Sequenced(event, message=None if message is None else apply_event(message, event))


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


__all__ = ["Sequenced", "check_batch", "encode_event", "sequence"]
