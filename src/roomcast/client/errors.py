"""Errors the SDK raises, on top of the server's typed errors.

The tree::

    RoomcastError (roomcast.protocol.errors)   an ``error`` reply, typed by its code
    ├── Unauthorized                           40100
    │   └── AuthError                          40100, as the SDK raises it
    └── ...                                    BadRequest, Forbidden, TooLarge, RateLimited, ...
    ClientClosed                               the client was closed (or failed) first
    Cancelled                                  a streamed message was cancelled
    Discontinuity                              a subscription could not continue gap-free

An ``error`` reply to a request is raised from the call that made it, as the class of its
code (``roomcast.protocol.errors.error_for_code``), so ``except Forbidden`` works the same in
the server and in the SDK.
"""

from __future__ import annotations

from roomcast.protocol.errors import RoomcastError, Unauthorized, error_for_code
from roomcast.protocol.messages import ErrorReply


class AuthError(Unauthorized):
    """The server refused the credentials (code 40100): a missing, invalid or expired token or
    key. The client does not retry it; connect again with other credentials."""


class ClientClosed(Exception):
    """The client was closed, or stopped reconnecting, before the operation could finish."""


class Discontinuity(Exception):
    """A subscription could not resume without a gap (PROTOCOL.md §2, ``discontinuity``).

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
    """The streamed message was cancelled (PROTOCOL.md §3 "Streams"): stop producing it.

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
    return error_for_code(reply.code, reply.message)


__all__ = ["AuthError", "Cancelled", "ClientClosed", "Discontinuity", "error_from_reply"]
