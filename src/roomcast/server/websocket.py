"""``/v1/ws``: moves frames between the socket and a :class:`Connection`."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.types import Message, Scope
from starlette.websockets import WebSocket

from roomcast.core.connection import Connection, Frame, open_connection, serve
from roomcast.core.node import Node
from roomcast.protocol.codec import codec_for
from roomcast.protocol.errors import (
    CLOSE_AUTH,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNSUPPORTED_DATA,
    BadRequest,
    RoomcastError,
    Unavailable,
)
from roomcast.protocol.messages import ErrorReply

from .errors import error_response, shed_response
from .overload import OVERLOADED, RETRY_CONNECTIONS_S, Overload
from .uvicorn_websocket import DIRECT_SEND

log = logging.getLogger("roomcast.ws")

HOST_REFUSED = "this server does not answer to that Host name (see allowed_hosts)"
# The ASGI extension for an HTTP response instead of the upgrade (uvicorn has it).
DENIAL_RESPONSE = "websocket.http.response"


class StarletteTransport:
    def __init__(self, websocket: WebSocket, *, text: bool) -> None:
        self._ws = websocket
        self._text = text
        direct = websocket.scope.get("extensions", {}).get(DIRECT_SEND)
        # The fan-out calls this once per subscriber per event: the extension itself, with
        # the frame type bound, is one call instead of two.
        self.send_now: Callable[[bytes], bool] = (
            _cannot_send_now if direct is None else functools.partial(direct, text=text)
        )

    async def send(self, frame: bytes) -> None:
        if self._text:
            await self._ws.send({"type": "websocket.send", "text": frame.decode()})
        else:
            await self._ws.send({"type": "websocket.send", "bytes": frame})

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code, reason)


def _cannot_send_now(frame: bytes) -> bool:
    return False  # another ASGI server: every send is awaited


def refusal(exc: RoomcastError) -> tuple[bytes, int]:
    """How a connection is refused: an ``error`` frame (always JSON: the format may be what
    was wrong) and the close code that follows it."""
    error = codec_for("json").encode(ErrorReply(code=exc.code, message=exc.message))
    code = {40100: CLOSE_AUTH, 42900: CLOSE_TRY_AGAIN_LATER, 50300: CLOSE_TRY_AGAIN_LATER}.get(
        exc.code, CLOSE_UNSUPPORTED_DATA
    )
    return error, code


async def _refuse(websocket: WebSocket, exc: RoomcastError) -> None:
    """An ``error``, then the close."""
    frame, code = refusal(exc)
    await websocket.send_text(frame.decode())
    await websocket.close(code, exc.message)


async def _shed(websocket: WebSocket) -> None:
    """Refuse a WebSocket on a full node before the upgrade: HTTP 503 with ``Retry-After``
    and the §7 error body. A load balancer takes that as a failed attempt and can try
    another node (a 101 followed by a close would count as a success). A server without
    the ASGI denial-response extension gets the accept, an ``error`` 50300 and close 1013.
    """
    if DENIAL_RESPONSE in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(shed_response(OVERLOADED, RETRY_CONNECTIONS_S))
        return
    await websocket.accept()
    await _refuse(websocket, Unavailable(OVERLOADED))


def header_of(scope: Scope, wanted: bytes) -> str | None:
    """A request's header (its first value; None if it has none) by its lower-case name,
    read from the scope: Starlette's ``Headers``, cached on the ``WebSocket``, would stay
    allocated for as long as the connection is open."""
    for name, value in scope.get("headers", ()):
        if name == wanted:
            return str(value.decode("latin-1"))
    return None


def host_of(scope: Scope) -> str | None:
    """The ``Host`` header of a request (None if it has none)."""
    return header_of(scope, b"host")


async def _refuse_host(websocket: WebSocket) -> None:
    """Refuse a WebSocket for a host name not served, before the upgrade: HTTP 400 with the
    §7 error body (or a 403 without the ASGI denial-response extension)."""
    log.warning("refused a WebSocket for Host %s (not in allowed_hosts)", host_of(websocket.scope))
    if DENIAL_RESPONSE in websocket.scope.get("extensions", {}):
        request = Request({**websocket.scope, "type": "http", "method": "GET"})
        await websocket.send_denial_response(error_response(request, BadRequest(HOST_REFUSED)))
        return
    await websocket.close(code=1008)


async def websocket_endpoint(websocket: WebSocket) -> None:
    node: Node = websocket.app.state.node
    if not node.settings.host_allowed(host_of(websocket.scope)):
        await _refuse_host(websocket)
        return
    scope = websocket.scope
    scheme = "https" if scope.get("scheme") == "wss" else "http"
    origin = header_of(scope, b"origin")
    if not node.settings.origin_allowed(origin, host_of(scope), scheme):
        log.warning("refused a WebSocket from origin %s (not in allowed_origins)", origin)
        await websocket.close(code=1008)  # before accept: an HTTP 403
        return
    overload: Overload = websocket.app.state.overload
    if overload.full:  # shed before any work: no token check, no store access
        if overload.should_warn():
            log.warning("shedding WebSockets: %d connections open", overload.connections)
        await _shed(websocket)
        return
    await websocket.accept()
    overload.websockets += 1
    try:
        conn = await _open(websocket, node)
        if conn is not None:
            await serve(conn, websocket.receive, _frame_of)
    finally:
        overload.websockets -= 1


async def _open(websocket: WebSocket, node: Node) -> Connection | None:
    """The connection of the caller's credentials, told ``connected``; None if refused."""
    # Not websocket.query_params: that would stay cached for as long as the connection is open.
    params = QueryParams(websocket.scope["query_string"])
    try:
        codec = codec_for(params.get("format", "json"))
        identity = node.identities.resolve(
            token=params.get("token"),
            key=params.get("key"),
            client_id=params.get("client_id"),
        )
        transport = StarletteTransport(websocket, text=codec.format == "json")
        return await open_connection(node, transport, codec, identity, params.get("resume"))
    except RoomcastError as exc:
        await _refuse(websocket, exc)
        return None
    finally:
        del params


def _frame_of(message: Message) -> Frame:
    if message["type"] == "websocket.disconnect":
        return int(message.get("code", 1005))
    text = message.get("text")
    if text is not None:
        return text, True
    return message.get("bytes") or b"", False
