"""Typed errors, each mapped to one docs/protocol.md §8 code.

The tree::

    RoomcastError                 (code 50000, the base)
    ├── BadRequest                40000  malformed request, unknown action, bad channel name
    ├── Unauthorized              40100  missing or invalid credentials
    ├── Forbidden                 40300  the capability does not allow the operation
    ├── NotFound                  40400  no such message or object
    ├── Conflict                  40900  the request conflicts with the current state
    │   └── StreamCancelled       40900  an append to a message that was cancelled
    ├── TooLarge                  41300  a message, stream or object state over its limit
    ├── RateLimited               42900  a per-connection rate limit was exceeded
    └── Unavailable               50300  the store cannot take writes right now
    ProtocolViolation             (not a RoomcastError) closes the connection with a close code

An error raised anywhere in ``core`` or ``backends`` reaches the client as one ``error`` message
with the code of its class; nothing else is ever sent, so a stack trace never leaks.
"""

from __future__ import annotations


class RoomcastError(Exception):
    """Base of every error a client can see; the code is docs/protocol.md §8's."""

    code = 50000

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(RoomcastError):
    code = 40000


class Unauthorized(RoomcastError):
    code = 40100


class Forbidden(RoomcastError):
    code = 40300


class NotFound(RoomcastError):
    code = 40400


class Conflict(RoomcastError):
    code = 40900


class StreamCancelled(Conflict):
    """An append refused because its message was cancelled; the ``error`` message carries
    ``cancelled_by`` (docs/protocol.md §8), so a client need not read it from the text.

    Attributes:
        cancelled_by: The ``client_id`` that cancelled the message.
    """

    def __init__(self, message: str, cancelled_by: str) -> None:
        super().__init__(message)
        self.cancelled_by = cancelled_by


class TooLarge(RoomcastError):
    code = 41300


class RateLimited(RoomcastError):
    code = 42900


class Unavailable(RoomcastError):
    code = 50300


ERRORS_BY_CODE: dict[int, type[RoomcastError]] = {
    cls.code: cls
    for cls in (BadRequest, Unauthorized, Forbidden, NotFound, Conflict, TooLarge, RateLimited)
} | {Unavailable.code: Unavailable, RoomcastError.code: RoomcastError}


def error_for_code(code: int, message: str, *, cancelled_by: str | None = None) -> RoomcastError:
    """The typed error for an ``error`` reply's code: how a client turns a reply back into
    the exception the server raised. A code this version does not know keeps its number.
    A 40900 with ``cancelled_by`` is a :class:`StreamCancelled`."""
    if code == Conflict.code and cancelled_by is not None:
        return StreamCancelled(message, cancelled_by)
    cls = ERRORS_BY_CODE.get(code)
    if cls is not None:
        return cls(message)
    error = RoomcastError(message)
    error.code = code
    return error


class ProtocolViolation(Exception):
    """A frame the connection cannot survive: the server closes with ``close_code``."""

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason


# WebSocket close codes (docs/protocol.md §8).
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_ABNORMAL = 1006
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_AUTH = 4001
CLOSE_SLOW_CONSUMER = 4008
