"""Errors the SDK raises, on top of the server's typed errors.

The tree::

    RoomcastError (roomcast.protocol.errors)   an ``error`` reply, typed by its code
    ├── Unauthorized                           40100
    │   └── AuthError                          40100, as the SDK raises it
    ├── Conflict                               40900
    │   └── StreamCancelled                    40900, ``cancelled_by``: append after a cancel
    ├── Unavailable                            50300
    │   └── Overloaded                         50300 at connect: the server is full, retry
    └── ...                                    BadRequest, Forbidden, TooLarge, RateLimited, ...
    ClientClosed                               the client was closed (or failed) first
    Cancelled                                  a streamed message was cancelled
    Discontinuity                              a subscription could not continue gap-free

An ``error`` reply to a request is raised from the call that made it, as the class of its
code (``roomcast.protocol.errors.error_for_code``), so ``except Forbidden`` works the same in
the server and in the SDK.
"""

from __future__ import annotations

import msgspec

from roomcast.protocol.errors import RoomcastError, Unauthorized, Unavailable, error_for_code
from roomcast.protocol.http import ErrorBody
from roomcast.protocol.messages import ErrorReply


class AuthError(Unauthorized):
    """The server refused the credentials (code 40100): a missing, invalid or expired token or
    key. The client does not retry it; connect again with other credentials."""


class Overloaded(Unavailable):
    """The server refused a new connection for now (code 50300): it holds as many
    connections as it may. It says so at the WebSocket upgrade with HTTP 503 and
    ``Retry-After`` (or, under an ASGI server without the denial-response extension, with an
    ``error`` 50300 and the close 1013 right after the upgrade).

    :func:`~roomcast.client.connect` retries it with backoff for up to ``overload_timeout``
    seconds and raises it only then; reconnects retry it for as long as it takes.

    Attributes:
        retry_after: The seconds the server asked to wait (its ``Retry-After``), or None.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ClientClosed(Exception):
    """The client was closed, or stopped reconnecting, before the operation could finish."""


class Discontinuity(Exception):
    """A subscription could not resume without a gap (docs/protocol.md §2, ``discontinuity``).

    Raised by a subscription's iterator where the gap is, after every event before it. The
    subscription stays usable: iterate it again to get the events that follow the new
    snapshot. The events in between are not replayed; reload what you show from
    :meth:`Channel.history <roomcast.client.Channel.history>`.

    Attributes:
        channel: The channel's name.
        reason: The server's explanation (the epoch changed, retention removed the events,
            or the requested serial is beyond the latest one).
        epoch: The channel's epoch from now on.
        serial: The latest serial of the new snapshot; events after it follow.
    """

    def __init__(self, channel: str, reason: str, epoch: str | None, serial: int) -> None:
        super().__init__(f"{channel}: {reason}")
        self.channel = channel
        self.reason = reason
        self.epoch = epoch
        self.serial = serial


class Cancelled(Exception):
    """The streamed message was cancelled (docs/protocol.md §3 "Streams"): stop producing it.

    Raised by :meth:`MessageStream.append <roomcast.client.MessageStream.append>`; the
    ``async with channel.stream()`` block that raised it ends the message ``cancelled`` and
    swallows it.

    Attributes:
        channel: The channel's name.
        msg_serial: The message's serial.
        cancelled_by: The ``client_id`` that cancelled it (``None`` if unknown).
    """

    def __init__(self, channel: str, msg_serial: int, cancelled_by: str | None) -> None:
        by = f" by {cancelled_by}" if cancelled_by else ""
        super().__init__(f"{channel} #{msg_serial} was cancelled{by}")
        self.channel = channel
        self.msg_serial = msg_serial
        self.cancelled_by = cancelled_by


def error_from_reply(reply: ErrorReply) -> RoomcastError:
    """The exception for an ``error`` reply (40100 becomes :class:`AuthError`)."""
    if reply.code == Unauthorized.code:
        return AuthError(reply.message)
    return error_for_code(reply.code, reply.message, cancelled_by=_given(reply.cancelled_by))


def error_from_http(status: int, body: bytes, what: str) -> RoomcastError:
    """The typed error for an HTTP error answer: from its §7 body
    (``{"error": {code, message, correlation_id}}``), or from its status when the body is not
    ours (a proxy, an older server). ``what`` names the request in the latter message."""
    try:
        detail = msgspec.json.decode(body, type=ErrorBody).error
    except msgspec.DecodeError:
        code, message, cancelled_by = status * 100, f"{what} answered HTTP {status}", None
    else:
        code, message, cancelled_by = detail.code, detail.message, _given(detail.cancelled_by)
        if code != Unauthorized.code:
            message += f" (correlation id {detail.correlation_id})"
    if code == Unauthorized.code:
        return AuthError(message)
    return error_for_code(code, message, cancelled_by=cancelled_by)


def _given(value: str | msgspec.UnsetType) -> str | None:
    return None if value is msgspec.UNSET else value


__all__ = [
    "AuthError",
    "Cancelled",
    "ClientClosed",
    "Discontinuity",
    "Overloaded",
    "error_from_http",
    "error_from_reply",
]
