"""How a channel's events roll up into a message's current state (docs/protocol.md §2, §3).

Every backend applies events with these functions in the same step that sequences them, so
history, ``rewind`` and replay agree on every backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from msgspec import UNSET, structs

from .errors import Conflict, NotFound, StreamCancelled, TooLarge
from .messages import FINAL_STATUSES, Event, Message

_encode = msgspec.json.Encoder().encode  # thread-safe: the SQLite writer thread uses it too


def message_from_create(event: Event) -> Message:
    """The initial state of the message a ``create`` event makes."""
    extras = {} if event.extras is UNSET else dict(event.extras)
    data: Any = None if event.data is UNSET else event.data
    return Message(
        msg_serial=event.serial,
        id=None if event.id is UNSET else event.id,
        client_id=event.client_id,
        name="text" if event.name is UNSET else event.name,
        data=data,
        extras=extras,
        timestamp=event.timestamp,
        updated_at=event.timestamp,
        status="streaming" if event.streaming is True else "complete",
    )


def merge_extras(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Shallow merge; a key set to ``null`` is removed."""
    merged = dict(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def apply_event(message: Message, event: Event) -> Message:
    """The state of ``message`` after ``event`` (which refers to it by ``msg_serial``)."""
    changes: dict[str, Any] = {"updated_at": event.timestamp}
    if event.type == "append":
        changes["data"] = (message.data or "") + (event.data if isinstance(event.data, str) else "")
    elif event.type == "update":
        if event.data is not UNSET:
            changes["data"] = event.data
        if event.extras is not UNSET:
            changes["extras"] = merge_extras(message.extras, event.extras)
        if event.status is not UNSET and message.status not in FINAL_STATUSES:
            changes["status"] = event.status
    elif event.type == "delete":
        changes["data"] = None
        changes["deleted"] = True
    elif event.type == "cancel":
        changes["cancelled_by"] = event.client_id
    elif event.type == "annotation":
        changes["reactions"] = apply_reaction(message.reactions, event)
    return structs.replace(message, **changes)


def apply_reaction(reactions: dict[str, list[str]], event: Event) -> dict[str, list[str]]:
    name = event.name if isinstance(event.name, str) else ""
    who = event.client_id or ""
    out = {k: list(v) for k, v in reactions.items()}
    members = out.setdefault(name, [])
    if event.op == "add" and who not in members:
        members.append(who)
    elif event.op == "remove" and who in members:
        members.remove(who)
    if not members:
        del out[name]
    return out


def admit(message: Message | None, event: Event, *, max_stream_bytes: int) -> bool:
    """Check that ``event`` may apply to ``message``, atomically with the write.

    Returns False for a no-op (it takes no serial and answers ``ok``), and raises
    :class:`NotFound` or :class:`Conflict` (or :class:`TooLarge`) when it cannot apply. A
    deleted message takes no change (deleting it again is a no-op). What the change makes
    is checked after it is applied (:func:`check_size`).
    """
    if event.type in ("create", "object"):
        return True
    if message is None:
        raise NotFound(f"no message {event.msg_serial} on {event.channel}")
    if event.type == "delete":
        return not message.deleted
    if message.deleted:
        raise Conflict(f"message {message.msg_serial} is deleted: it takes no more changes")
    return _ADMIT[event.type](message, event, max_stream_bytes)


def message_size(message: Message) -> int:
    """The bytes of ``message`` that ``max_message_bytes`` bounds: its extras, its reactions
    and its data unless that is text, as JSON. Text is bounded where it is written: an
    ``update`` carries at most ``max_message_bytes``, appends at most ``max_stream_bytes``.
    """
    size = len(_encode(message.extras)) if message.extras else 0
    if message.reactions:
        size += len(_encode(message.reactions))
    if message.data is not None and not isinstance(message.data, str):
        size += len(_encode(message.data))
    return size


def check_size(before: Message, after: Message, *, max_message_bytes: int) -> None:
    """Refuse a change that takes a message over ``max_message_bytes`` (see
    :func:`message_size`); a change that does not grow it always goes.

    Raises:
        TooLarge: The message would be larger than the limit, and larger than it was.
    """
    if after.extras is before.extras and after.reactions is before.reactions:
        if after.data is before.data or isinstance(after.data, str | None):
            return  # nothing the rule counts has changed (appends, cancels, statuses)
    size = message_size(after)
    if size > max_message_bytes and size > message_size(before):
        raise TooLarge(
            f"message {after.msg_serial} would take {size} bytes (extras, reactions and "
            f"data that is not text), over the {max_message_bytes} byte limit"
        )


def append_refusal(
    msg_serial: int,
    *,
    status: str,
    cancelled_by: str | None,
    author: str | None,
    appender: str | None,
    size: int,
    max_stream_bytes: int,
    deleted: bool = False,
    text: bool = True,
) -> Conflict | TooLarge | None:
    """Why an append to message ``msg_serial`` is refused, or None if it may go.

    The message must not be deleted, must be streaming, not cancelled and the appender's
    own, its data must be text (``text``: a string, or null), and ``size`` (its bytes with
    the append) within the limit. The store raises it (:func:`admit`); the core checks
    appends with it before they reach the store, so both refuse alike.
    """
    what = f"message {msg_serial}"
    if deleted:
        return Conflict(f"{what} is deleted: it takes no more changes")
    if status != "streaming":
        return Conflict(f"{what} is not streaming")
    if cancelled_by is not None:
        return StreamCancelled(f"{what} was cancelled by {cancelled_by}", cancelled_by)
    if appender != author:
        return Conflict(f"{what} is not yours to append to")
    if not text:
        return Conflict(f"{what}'s data is not text: it cannot be appended to")
    if size > max_stream_bytes:
        return TooLarge(f"stream would be {size} bytes, over the {max_stream_bytes} limit")
    return None


def is_text(data: Any) -> bool:
    """Whether appends may add to ``data``: a string, or null (empty text)."""
    return data is None or isinstance(data, str)


def _admit_append(message: Message, event: Event, max_stream_bytes: int) -> bool:
    error = append_refusal(
        message.msg_serial,
        status=message.status,
        cancelled_by=message.cancelled_by,
        author=message.client_id,
        appender=event.client_id,
        size=len(str(message.data or "").encode()) + len(str(event.data).encode()),
        max_stream_bytes=max_stream_bytes,
        text=is_text(message.data),
    )
    if error is not None:
        raise error
    return True


def _admit_update(message: Message, event: Event, max_stream_bytes: int) -> bool:
    if event.status is not UNSET and message.status in FINAL_STATUSES:
        if event.status != message.status:
            raise Conflict(f"message {message.msg_serial} is already {message.status}")
        if event.data is UNSET and event.extras is UNSET:
            return False  # repeating a final status
    return True


def _admit_cancel(message: Message, event: Event, max_stream_bytes: int) -> bool:
    if message.cancelled_by is not None:
        return False
    if message.status != "streaming":
        raise Conflict(f"message {message.msg_serial} is not streaming")
    return True


def _admit_annotation(message: Message, event: Event, max_stream_bytes: int) -> bool:
    # Adding a reaction twice, or removing one never added, is a no-op.
    present = (event.client_id or "") in message.reactions.get(str(event.name), [])
    return present != (event.op == "add")


_ADMIT: dict[str, Callable[[Message, Event, int], bool]] = {
    "append": _admit_append,
    "update": _admit_update,
    "cancel": _admit_cancel,
    "annotation": _admit_annotation,
}
