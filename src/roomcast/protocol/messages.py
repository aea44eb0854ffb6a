"""One msgspec type per protocol action (docs/protocol.md), defined once for the server,
the SDK and the tests.

Requests (client → server) and replies (server → client) are two tagged unions on the
``action`` field. Validation lives in the types (channel pattern, ranges, literals), so a
request that decodes is well-formed; what it *means* is checked by ``core``.
"""

from __future__ import annotations

import math as _math
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from msgspec import UNSET, Meta, Struct, UnsetType
from msgspec.msgpack import Ext

_SEGMENT = r"[A-Za-z0-9_.\-]+"
CHANNEL_PATTERN = rf"^(?!.{{201}}){_SEGMENT}(?::{_SEGMENT})*(?!\n)$"
r"""A channel name (and a ``client_id``): 1 to 200 characters in non-empty ``:`` segments.
The same text is the OpenAPI pattern, so it means the same in Python and in ECMAScript:
``(?!.{201})`` bounds the length, and ``(?!\n)$`` is the very end of the string (Python's
``$`` alone also matches before a final newline, and msgspec searches with it)."""

MAX_SERIAL = 2**53 - 1
"""The largest serial, ``msg_serial`` or count a request may name. The stores hold more
(SQLite's INTEGER is signed 64-bit), but a JavaScript client reads numbers as doubles and
the Redis scripts count in Lua's doubles: both are exact up to 2**53 - 1, and a store can
still add 1 to it. A server would need centuries of writes to get near it."""

MIN_INT, MAX_INT = -(2**63), 2**64 - 1
"""The integers that every wire format carries: MessagePack has no larger ones, and JSON
numbers beyond them would not reach a MessagePack reader."""

MAX_DEPTH = 64
"""How deeply arrays and objects may nest in a value (``data``, ``extras``, an object's
entries). Decoding and encoding recurse once per level; this keeps every frame and stored
event far from Python's recursion limit."""

Channel = Annotated[str, Meta(pattern=CHANNEL_PATTERN)]
Serial = Annotated[int, Meta(ge=0, le=MAX_SERIAL)]
MsgSerial = Annotated[int, Meta(ge=1, le=MAX_SERIAL)]
Ref = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
ShortName = Annotated[str, Meta(min_length=1, max_length=200)]
Extras = dict[str, Any]


def check_value(value: Any, field: str) -> None:
    """Refuse (40000) a value that some wire format cannot carry or would give back changed.
    Every format carries null, booleans, strings, integers from ``MIN_INT`` to ``MAX_INT``,
    finite numbers, arrays, and objects with string keys, nested at most ``MAX_DEPTH`` deep;
    JSON has no raw bytes, MessagePack extensions or timestamps, NaN or infinities.

    Raises:
        ValueError: a number out of range, or nesting too deep.
        TypeError: a map key that is not a string, or a kind of value JSON lacks.
    """
    problem = _problem(value, MAX_DEPTH)
    if problem is not None:
        raise type(problem)(f"`{field}` {problem}")


_NOT_JSON = (bytes, bytearray, memoryview, Ext, datetime)
"""What a MessagePack frame decodes to that JSON has not. (A client's own values of other
kinds are left to its encoder; a server decodes no others.)"""


_PLAIN = frozenset({str, bool, type(None)})


def _problem(value: Any, depth: int) -> Exception | None:
    # Called once per publish, and once per number and container inside its value: the
    # common kinds are tested first, and plain items of a container without a call.
    kind = type(value)
    if kind in _PLAIN:
        return None
    if kind is int:
        if MIN_INT <= value <= MAX_INT:
            return None
        return ValueError("holds an integer beyond 64 bits (below -2**63 or over 2**64 - 1)")
    if kind is float:
        return None if _math.isfinite(value) else ValueError("holds a number that is not finite")
    if kind is dict or kind is list or kind is tuple:
        if depth == 0:
            return ValueError(f"nests deeper than {MAX_DEPTH} levels")
        return _items_problem(value, depth - 1)
    if isinstance(value, _NOT_JSON):
        return TypeError(f"holds a {kind.__name__}, which JSON cannot carry")
    return None


def _items_problem(
    value: dict[Any, Any] | list[Any] | tuple[Any, ...], depth: int
) -> Exception | None:
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str and not isinstance(key, str):
                return TypeError("has a map key that is not a string")
            if type(item) not in _PLAIN and (problem := _problem(item, depth)):
                return problem
        return None
    for item in value:
        if type(item) not in _PLAIN and (problem := _problem(item, depth)):
            return problem
    return None


EventType = Literal["create", "append", "update", "delete", "annotation", "cancel", "object"]
EVENT_TYPES: frozenset[EventType] = frozenset(get_args(EventType))
Status = Literal["streaming", "complete", "cancelled", "failed"]
FINAL_STATUSES: frozenset[str] = frozenset({"complete", "cancelled", "failed"})
PresenceOp = Literal["enter", "update", "leave"]

# --------------------------------------------------------------------------- requests


class Request(Struct, tag_field="action", kw_only=True, omit_defaults=True):
    """Base of every client request; ``ref`` is echoed by the reply."""

    ref: Ref | None = None


class Attach(Request, tag="attach", kw_only=True):
    channel: Channel
    from_serial: Serial | None = None
    epoch: str | None = None
    rewind: Annotated[int, Meta(ge=0, le=1000)] | None = None
    # Only events of these types are sent, live and in the replay (an additive choice:
    # an agent that reads whole messages needs no fragments).
    types: Annotated[list[EventType], Meta(min_length=1, max_length=7)] | None = None


class Detach(Request, tag="detach", kw_only=True):
    channel: Channel


class Publish(Request, tag="publish", kw_only=True):
    channel: Channel
    data: Any
    id: ShortName | None = None
    name: ShortName = "text"
    extras: Extras | None = None
    streaming: bool = False

    def __post_init__(self) -> None:
        if self.streaming and not isinstance(self.data, str):
            raise ValueError("`data` must be a string when `streaming` is true")
        check_value(self.data, "data")
        if self.extras is not None:
            check_value(self.extras, "extras")


class Append(Request, tag="append", kw_only=True):
    channel: Channel
    msg_serial: MsgSerial
    data: str


class Update(Request, tag="update", kw_only=True):
    channel: Channel
    msg_serial: MsgSerial
    data: Any | UnsetType = UNSET
    extras: Extras | UnsetType = UNSET
    status: Status | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.data is UNSET and self.extras is UNSET and self.status is UNSET:
            raise ValueError("`update` needs at least one of `data`, `extras` or `status`")
        if self.data is not UNSET:
            check_value(self.data, "data")
        if self.extras is not UNSET:
            check_value(self.extras, "extras")


class Delete(Request, tag="delete", kw_only=True):
    channel: Channel
    msg_serial: MsgSerial


class Annotate(Request, tag="annotate", kw_only=True):
    channel: Channel
    msg_serial: MsgSerial
    kind: Literal["reaction"]
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    op: Literal["add", "remove"]


class Cancel(Request, tag="cancel", kw_only=True):
    channel: Channel
    msg_serial: MsgSerial
    reason: str | None = None


class PresenceRequest(Request, tag="presence", kw_only=True):
    channel: Channel
    op: PresenceOp
    data: Any = None

    def __post_init__(self) -> None:
        check_value(self.data, "data")


class MapCreate(Struct, tag_field="type", tag="map.create", kw_only=True):
    entries: dict[str, Any] = {}

    def __post_init__(self) -> None:
        check_value(self.entries, "entries")


class MapSet(Struct, tag_field="type", tag="map.set", kw_only=True):
    object_id: ShortName
    key: ShortName
    value: Any

    def __post_init__(self) -> None:
        check_value(self.value, "value")


class MapRemove(Struct, tag_field="type", tag="map.remove", kw_only=True):
    object_id: ShortName
    key: ShortName


class CounterCreate(Struct, tag_field="type", tag="counter.create", kw_only=True):
    value: int | float = 0

    def __post_init__(self) -> None:
        check_value(self.value, "value")


class CounterInc(Struct, tag_field="type", tag="counter.inc", kw_only=True):
    object_id: ShortName
    amount: int | float = 1

    def __post_init__(self) -> None:
        check_value(self.amount, "amount")


ObjectOp = MapCreate | MapSet | MapRemove | CounterCreate | CounterInc


class ObjectRequest(Request, tag="object", kw_only=True):
    channel: Channel
    op: ObjectOp


class Signal(Request, tag="signal", kw_only=True):
    channel: Channel
    name: ShortName
    data: Any = None

    def __post_init__(self) -> None:
        check_value(self.data, "data")


class History(Request, tag="history", kw_only=True):
    channel: Channel
    before: MsgSerial | None = None
    after: Serial | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100

    def __post_init__(self) -> None:
        if self.before is not None and self.after is not None:
            raise ValueError("`before` and `after` cannot be used together")


class Claim(Request, tag="claim", kw_only=True):
    channel: Channel
    key: ShortName
    ttl_s: Annotated[float, Meta(gt=0, le=86400)]


class Auth(Request, tag="auth", kw_only=True):
    token: str


class Ping(Request, tag="ping", kw_only=True):
    pass


ClientRequest = (
    Attach
    | Detach
    | Publish
    | Append
    | Update
    | Delete
    | Annotate
    | Cancel
    | PresenceRequest
    | ObjectRequest
    | Signal
    | History
    | Claim
    | Auth
    | Ping
)

# --------------------------------------------------------------------------- state


class Message(Struct, kw_only=True):
    """A message's rolled-up state, as history and ``attached.messages`` return it (§3)."""

    msg_serial: int
    id: str | None
    client_id: str | None
    name: str
    data: Any
    extras: Extras
    timestamp: int
    updated_at: int
    status: Status
    deleted: bool = False
    cancelled_by: str | None = None
    reactions: dict[str, list[str]] = {}


class PresenceMember(Struct, kw_only=True):
    client_id: str
    connection_id: str
    data: Any
    timestamp: int


class ObjectState(Struct, kw_only=True, omit_defaults=True):
    type: Literal["map", "counter"]
    entries: dict[str, Any] | UnsetType = UNSET
    value: int | float | UnsetType = UNSET


class ObjectsSnapshot(Struct, kw_only=True):
    serial: int
    objects: dict[str, ObjectState]


# --------------------------------------------------------------------------- replies


class Reply(Struct, tag_field="action", kw_only=True, omit_defaults=True):
    """Base of every server message. Unset fields are left out of the wire form."""


class Connected(Reply, tag="connected", kw_only=True):
    connection_id: str
    client_id: str
    resume_key: str
    resumed: bool
    heartbeat_s: float
    limits: dict[str, Any]
    # What this connection may do (§6: pattern → operations), so that a UI offers only what
    # the server allows. Optional: servers before it leave it out.
    capability: dict[str, list[str]] | UnsetType = UNSET


class Attached(Reply, tag="attached", kw_only=True):
    ref: int | UnsetType = UNSET
    channel: str
    epoch: str
    serial: int
    resumed: bool
    messages: list[Message] | UnsetType = UNSET
    presence: list[PresenceMember]  # always sent, even empty (omit_defaults would drop [])
    objects: ObjectsSnapshot | UnsetType = UNSET


class Detached(Reply, tag="detached", kw_only=True):
    ref: int | UnsetType = UNSET
    channel: str


class Event(Reply, tag="event", kw_only=True):
    """One durable event of a channel's log (§2). Fields beyond the common ones depend on
    ``type``; the store keeps events in exactly this form."""

    channel: str
    serial: int
    type: EventType
    msg_serial: int | UnsetType = UNSET
    client_id: str | None
    timestamp: int
    # create
    id: str | UnsetType | None = UNSET
    name: str | UnsetType = UNSET
    streaming: bool | UnsetType = UNSET
    # create, append, update
    data: Any | UnsetType = UNSET
    extras: Extras | UnsetType = UNSET
    # update
    status: Status | UnsetType = UNSET
    # annotation
    kind: str | UnsetType = UNSET
    op: Any | UnsetType = UNSET
    # cancel
    reason: str | UnsetType | None = UNSET
    # object create
    object_id: str | UnsetType = UNSET


class PresenceEvent(Reply, tag="presence", kw_only=True):
    channel: str
    op: PresenceOp
    client_id: str
    connection_id: str
    data: Any = None
    timestamp: int


class SignalEvent(Reply, tag="signal", kw_only=True):
    channel: str
    client_id: str | None  # None for the server's own (``channel.occupied``)
    name: str
    data: Any = None


class HistoryReply(Reply, tag="history", kw_only=True):
    ref: int | UnsetType = UNSET
    channel: str
    messages: list[Message]
    has_more: bool


class Ok(Reply, tag="ok", kw_only=True):
    ref: int | UnsetType = UNSET
    serial: int | UnsetType = UNSET
    object_id: str | UnsetType = UNSET
    granted: bool | UnsetType = UNSET


class ErrorReply(Reply, tag="error", kw_only=True):
    ref: int | UnsetType = UNSET
    code: int
    message: str
    channel: str | UnsetType = UNSET
    cancelled_by: str | UnsetType = UNSET  # 40900 for an append after a cancel: who


class Discontinuity(Reply, tag="discontinuity", kw_only=True):
    channel: str
    reason: str


class Heartbeat(Reply, tag="heartbeat", kw_only=True):
    pass


class Pong(Reply, tag="pong", kw_only=True):
    ref: int | UnsetType = UNSET


ServerMessage = (
    Connected
    | Attached
    | Detached
    | Event
    | PresenceEvent
    | SignalEvent
    | HistoryReply
    | Ok
    | ErrorReply
    | Discontinuity
    | Heartbeat
    | Pong
)


def ref_of(ref: int | None) -> int | UnsetType:
    """A request's ``ref`` as a reply field: absent when the request had none."""
    return UNSET if ref is None else ref


__all__ = [
    name
    for name in dir()
    if not name.startswith("_") and name not in {"msgspec", "Ext", "datetime"}
]
