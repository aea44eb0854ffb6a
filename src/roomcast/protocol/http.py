"""The shapes of the HTTP API (docs/protocol.md §7), defined once for the server, the OpenAPI
document, the SDK and the tests.

Request bodies are not defined again here: a REST body is the matching WebSocket request
(:class:`~roomcast.protocol.messages.Publish`, ``Update``, ...) without its envelope
(``action``, ``ref``) and without the fields the URL carries (``channel``, ``msg_serial``).
The server converts the body into that request type, so one set of rules validates both
transports. :data:`ENVELOPE` names the fields that a body or a query string never carries.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from .messages import Channel, Message, MsgSerial, PresenceMember

ENVELOPE: frozenset[str] = frozenset({"action", "ref", "channel", "msg_serial"})
"""Fields of a request type that come from the URL path or the WebSocket envelope."""

MAX_BATCH = 1000
"""Messages in one batch publish."""

# --------------------------------------------------------------------------- paths, queries


class ChannelPath(Struct, kw_only=True):
    """The path parameters of ``/v1/channels/{channel}/...``."""

    channel: Channel


class MessagePath(Struct, kw_only=True):
    """The path parameters of ``/v1/channels/{channel}/messages/{msg_serial}/...``."""

    channel: Channel
    msg_serial: MsgSerial


class ChannelQuery(Struct, kw_only=True):
    """The query of ``GET /v1/channels``."""

    prefix: Annotated[str, Meta(max_length=200)] = ""
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100
    after: Annotated[str, Meta(max_length=200)] = ""  # the last name of the previous page


class TokenRequest(Struct, kw_only=True):
    """The body of ``POST /v1/tokens``: whom the token is for, what it grants (default: the
    key's own capability; never more) and for how long."""

    client_id: Channel
    capability: dict[str, list[str]] | UnsetType = UNSET
    ttl_s: Annotated[int, Meta(ge=1, le=86400)] = 3600


# --------------------------------------------------------------------------- responses


class TokenResult(Struct, kw_only=True):
    """A signed token and when it expires, in ms since the epoch."""

    token: str
    expires_at: int


class PublishResult(Struct, kw_only=True):
    """A publish: the new message's serial (the first one's, for a repeated ``id``)."""

    msg_serial: int


class PublishBatchResult(Struct, kw_only=True):
    """A batch publish: one ``msg_serial`` per message, in the order sent."""

    msg_serials: list[int]


class ChangeResult(Struct, kw_only=True, omit_defaults=True):
    """An append, update, delete, cancel or annotation: the event's ``serial``, or ``{}``
    when the request changed nothing (a no-op takes no serial, docs/protocol.md §1)."""

    serial: int | UnsetType = UNSET


class ObjectOpResult(Struct, kw_only=True, omit_defaults=True):
    """A live-object operation: its ``serial``, and the new ``object_id`` for a create."""

    serial: int
    object_id: str | UnsetType = UNSET


class AgentInfo(Struct, kw_only=True):
    """One configured agent, as ``GET /v1/agents`` lists it; ``note`` (when present) says
    why it does not run the model it was configured with, e.g. ``the openai package is not
    installed: pip install 'roomcast[openai]'`` (it then answers as ``scripted``)."""

    name: str
    provider: str
    model: str
    policy: str
    rooms: list[str]
    tools: list[str] = []
    note: str | UnsetType = UNSET


class AgentList(Struct, kw_only=True):
    items: list[AgentInfo]


class MessagePage(Struct, kw_only=True):
    """A page of history, oldest first; ``has_more`` says whether more lie beyond it."""

    items: list[Message]
    has_more: bool


class PresencePage(Struct, kw_only=True):
    """A channel's presence members."""

    items: list[PresenceMember]


class ChannelSummary(Struct, kw_only=True):
    """A channel with at least one event. ``occupancy`` counts the subscribers attached on
    the node that answered (WebSocket attachments and SSE streams)."""

    channel: str
    epoch: str
    serial: int
    updated_at: int
    occupancy: int


class ChannelPage(Struct, kw_only=True):
    """Channels by name."""

    items: list[ChannelSummary]


class ErrorDetail(Struct, kw_only=True):
    code: int
    message: str
    correlation_id: str
    cancelled_by: str | UnsetType = UNSET  # as in the `error` message (docs/protocol.md §8)


class ErrorBody(Struct, kw_only=True):
    """Every HTTP error: the HTTP status is ``code // 100``; the server log has the
    ``correlation_id`` too."""

    error: ErrorDetail


class HealthStatus(Struct, kw_only=True, omit_defaults=True):
    """``/healthz`` and ``/readyz``; ``reason`` says why the store is unavailable."""

    status: Literal["ok", "unavailable"]
    reason: str | UnsetType = UNSET


def describe_validation_error(text: str, where: str, index: int | None = None) -> str:
    """A msgspec validation message, saying which part of the request it is about
    (``where``: body, query, path) and, in a batch, which item (``$[3].name``)."""
    if index is not None:
        if "- at `$" in text:
            text = text.replace("- at `$", f"- at `$[{index}]", 1)
        else:
            text = f"{text} - at `$[{index}]`"
    return f"invalid {where}: {text}"


__all__ = [
    "ENVELOPE",
    "MAX_BATCH",
    "ChangeResult",
    "ChannelPage",
    "ChannelPath",
    "ChannelQuery",
    "ChannelSummary",
    "ErrorBody",
    "ErrorDetail",
    "HealthStatus",
    "MessagePage",
    "MessagePath",
    "PresencePage",
    "PublishBatchResult",
    "PublishResult",
    "TokenRequest",
    "TokenResult",
    "describe_validation_error",
]
