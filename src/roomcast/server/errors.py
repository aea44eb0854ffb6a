"""HTTP error responses (docs/protocol.md §7): ``{"error": {"code", "message", "correlation_id"}}``
with HTTP status ``code // 100``.

Every error gets a fresh correlation id, which is logged with it (client errors at INFO,
internal ones at ERROR with the stack trace, which never reaches the client).
"""

from __future__ import annotations

import logging
import secrets

import msgspec
from msgspec import UNSET, UnsetType
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from roomcast.protocol.errors import (
    BadRequest,
    NotFound,
    RoomcastError,
    StreamCancelled,
    Unavailable,
)
from roomcast.protocol.http import ErrorBody, ErrorDetail

log = logging.getLogger("roomcast.http")

CORRELATION_HEADER = "X-Correlation-Id"
# 50300 (the server sheds load, or the store takes no writes) says when to come back.
RETRY_AFTER_S = 1


class MethodNotAllowed(RoomcastError):
    """The path exists, but not with this method (HTTP only)."""

    code = 40500


def new_correlation_id() -> str:
    return secrets.token_hex(8)


def json_response(body: msgspec.Struct, status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json")


def error_response(request: Request, exc: RoomcastError) -> Response:
    """The response for a refused request; logged at INFO (a client's mistake, not ours)."""
    correlation_id = new_correlation_id()
    log.info(
        "%s %s -> %d %s (correlation id %s)",
        request.method,
        request.url.path,
        exc.code,
        exc.message,
        correlation_id,
    )
    cancelled_by = exc.cancelled_by if isinstance(exc, StreamCancelled) else UNSET
    return _render(exc.code, exc.message, correlation_id, cancelled_by)


def shed_response(message: str, retry_after: int) -> Response:
    """503 (code 50300) with ``Retry-After``: the server sheds load and says when to come back.

    Not logged here: refusals under overload come in floods, so the caller logs shedding at
    most every few seconds (``Overload.should_warn``).
    """
    response = _render(Unavailable.code, message, new_correlation_id())
    response.headers["Retry-After"] = str(retry_after)
    return response


def internal_error_response(request: Request, exc: BaseException) -> Response:
    """50000 for an unexpected exception: the stack trace goes to the log, not the client."""
    correlation_id = new_correlation_id()
    log.error(
        "%s %s -> internal error (correlation id %s)",
        request.method,
        request.url.path,
        correlation_id,
        exc_info=exc,
    )
    return _render(50000, f"internal error (correlation id {correlation_id})", correlation_id)


def _render(
    code: int, message: str, correlation_id: str, cancelled_by: str | UnsetType = UNSET
) -> Response:
    detail = ErrorDetail(
        code=code, message=message, correlation_id=correlation_id, cancelled_by=cancelled_by
    )
    body = ErrorBody(error=detail)
    response = json_response(body, status=code // 100)
    response.headers[CORRELATION_HEADER] = correlation_id
    if code == Unavailable.code:
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no route, wrong method, bad request) in the same format."""
    assert isinstance(exc, HTTPException)
    error: RoomcastError
    if exc.status_code == 404:
        error = NotFound(f"no route for {request.method} {request.url.path}")
    elif exc.status_code == 405:
        error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
    elif 400 <= exc.status_code < 500:
        error = BadRequest(str(exc.detail))
    else:
        error = RoomcastError(str(exc.detail))
    response = error_response(request, error)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def unhandled_exception_handler(request: Request, exc: Exception) -> Response:
    return internal_error_response(request, exc)


__all__ = [
    "CORRELATION_HEADER",
    "MethodNotAllowed",
    "error_response",
    "http_exception_handler",
    "internal_error_response",
    "json_response",
    "shed_response",
    "unhandled_exception_handler",
]
