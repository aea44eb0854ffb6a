"""One msgspec type per protocol action (docs/protocol.md), defined once for the server,
the SDK and the tests.

Requests (client → server) and replies (server → client) are two tagged unions on the
``action`` field. Validation lives in the types (channel pattern, ranges, literals), so a
request that decodes is well-formed; what it *means* is checked by ``core``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

CHANNEL_PATTERN = r"^[A-Za-z0-9_.:\-]{1,200}$"

Channel = Annotated[str, Meta(pattern=CHANNEL_PATTERN)]
Serial = Annotated[int, Meta(ge=0)]
MsgSerial = Annotated[int, Meta(ge=1)]
ShortName = Annotated[str, Meta(min_length=1, max_length=200)]
Extras = dict[str, Any]

EventType = Literal["create", "append", "update", "delete", "annotation", "cancel", "object"]
Status = Literal["streaming", "complete", "cancelled", "failed"]
FINAL_STATUSES: frozenset[str] = frozenset({"complete", "cancelled", "failed"})
PresenceOp = Literal["enter", "update", "leave"]

# --------------------------------------------------------------------------- requests


class Request(Struct, tag_field="action", kw_only=True, omit_defaults=True):
    """Base of every client request; ``ref`` is echoed by the reply."""

    ref: int | None = None


class Attach(Request, tag="attach", kw_only=True):
    channel: Channel
    from_serial: Serial | None = None
    epoch: str | None = None
    rewind: Annotated[int, Meta(ge=0, le=1000)] | None = None


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


class MapCreate(Struct, tag_field="type", tag="map.create", kw_only=True):
    entries: dict[str, Any] = {}


class MapSet(Struct, tag_field="type", tag="map.set", kw_only=True):
    object_id: ShortName
    key: ShortName
    value: Any


class MapRemove(Struct, tag_field="type", tag="map.remove", kw_only=True):
    object_id: ShortName
    key: ShortName


class CounterCreate(Struct, tag_field="type", tag="counter.create", kw_only=True):
    value: int | float = 0


class CounterInc(Struct, tag_field="type", tag="counter.inc", kw_only=True):
    object_id: ShortName
    amount: int | float = 1


ObjectOp = MapCreate | MapSet | MapRemove | CounterCreate | CounterInc


class ObjectRequest(Request, tag="object", kw_only=True):
    channel: Channel
    op: ObjectOp


class Signal(Request, tag="signal", kw_only=True):
    channel: Channel
    name: ShortName
    data: Any = None


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
    client_id: str
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


__all__ = [name for name in dir() if not name.startswith("_") and name != "msgspec"]
