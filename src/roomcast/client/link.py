"""One connection to the server: the handshake up to ``connected``, a reader that decodes
frames into typed server messages, and a writer that batches requests.

A :class:`Link` lives as long as its socket. Reconnecting makes a new one; what must outlive
a socket (pending requests, attached channels) belongs to :class:`~roomcast.client.Client`.
The socket is a WebSocket unless a :data:`Dial` opens another :class:`FrameSocket` (the
agents that ``roomcast serve`` hosts reach its core in memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

import msgspec
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Response

from roomcast.protocol.codec import codec_for, take_batch
from roomcast.protocol.errors import (
    CLOSE_ABNORMAL,
    CLOSE_AUTH,
    RoomcastError,
    Unauthorized,
    Unavailable,
)
from roomcast.protocol.messages import Connected, ErrorReply, Request, ServerMessage

from .errors import AuthError, ClientClosed, Overloaded, error_from_http, error_from_reply

log = logging.getLogger("roomcast.client")

Format = Literal["json", "msgpack"]
Handler = Callable[[ServerMessage], None]

MAX_BATCH_MESSAGES = 512
DEFAULT_BATCH_BYTES = 64 * 1024
# Close codes after which reconnecting cannot help: bad credentials, or frames the server
# refused (a bug, or a server this SDK does not match). Everything else is retried.
TERMINAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, CLOSE_AUTH})


class _Abortable(Protocol):
    def abort(self) -> None: ...


class FrameSocket(Protocol):
    """What a link uses of its socket: a ``websockets`` client connection is one. ``recv``
    and ``send`` raise ``websockets.exceptions.ConnectionClosed`` once it is closed (its
    ``rcvd`` is the peer's close, None if the connection was lost)."""

    @property
    def transport(self) -> _Abortable:
        """``abort()`` drops the connection without a close."""
        ...

    async def recv(self, decode: Literal[False]) -> bytes: ...

    async def send(self, message: bytes, *, text: bool | None = None) -> None: ...

    async def close(self) -> None: ...


Dial = Callable[[str, float], Awaitable[FrameSocket]]
"""Opens the socket of a link: ``dial(url, open_timeout)``, the URL with its query
(credentials, ``resume``, ``format``). The default is a WebSocket to that URL."""


async def dial_websocket(url: str, open_timeout: float) -> FrameSocket:
    """A WebSocket to ``url``: the default :data:`Dial`.

    Raises:
        Overloaded, RoomcastError: The upgrade was refused with HTTP 503 or 401.
        OSError, TimeoutError, websockets.exceptions.WebSocketException: The server could
            not be reached, or answered with another HTTP status.
    """
    try:
        return await ws_connect(
            url,
            open_timeout=open_timeout,
            max_size=None,
            compression=None,  # the server does not compress: small frames, low latency
        )
    except InvalidStatus as exc:
        refusal = _upgrade_refusal(exc.response)
        if refusal is None:
            raise
        raise refusal from exc


class Link:
    """A connected socket. Built by :meth:`open`, which returns once ``connected`` arrived."""

    def __init__(self, ws: FrameSocket, fmt: Format, connected: Connected) -> None:
        self.ws = ws
        self.connected = connected
        self.close_code: int | None = None
        self.close_reason = ""
        self.last_error: ErrorReply | None = None  # an error without a ref, before a close
        self._codec = codec_for(fmt)
        self._text = fmt == "json"
        self._raw = _raw_decoder(fmt)
        # A batch must stay well under the largest frame the server reads (2 x max bytes).
        limit = connected.limits.get("max_message_bytes", DEFAULT_BATCH_BYTES)
        self._batch_bytes = int(limit) if isinstance(limit, int) else DEFAULT_BATCH_BYTES
        self._out: list[bytes] = []
        self._wake = asyncio.Event()
        self._leftover: list[ServerMessage] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.done = asyncio.Event()

    @classmethod
    async def open(
        cls, url: str, fmt: Format, open_timeout: float, dial: Dial = dial_websocket
    ) -> Link:
        """Connect (``dial``: a WebSocket by default) and wait for ``connected``.

        Raises:
            Overloaded: The server is full: HTTP 503 at the upgrade (with its
                ``Retry-After``), or an ``error`` 50300 right after it.
            RoomcastError: The server answered with another ``error`` instead (40100, or
                HTTP 401 at the upgrade, is :class:`~roomcast.client.AuthError`).
            OSError, TimeoutError, websockets.exceptions.WebSocketException: The server
                could not be reached, or the handshake failed (``InvalidStatus`` for an
                HTTP answer other than 401 and 503: no roomcast WebSocket there).
        """
        ws = await dial(url, open_timeout)
        try:
            async with asyncio.timeout(open_timeout):
                frame = await ws.recv(decode=False)
        except BaseException:
            ws.transport.abort()
            raise
        messages = _decode(codec_for(fmt), _raw_decoder(fmt), frame)
        first = messages[0] if messages else None
        if isinstance(first, Connected):
            link = cls(ws, fmt, first)
            link._leftover = messages[1:]
            return link
        with contextlib.suppress(Exception):
            await ws.close()
        if isinstance(first, ErrorReply):
            if first.code == Unavailable.code:  # a server that sheds after the upgrade
                raise Overloaded(first.message)
            raise error_from_reply(first)
        raise ConnectionError(f"the server did not answer with `connected`: {first!r}")

    def start(self, handler: Handler) -> None:
        """Start reading (every message goes to ``handler``, in order) and writing."""
        leftover, self._leftover = self._leftover, []
        for message in leftover:
            handler(message)
        self._tasks = [
            asyncio.create_task(self._read(handler), name="roomcast-client-read"),
            asyncio.create_task(self._write(), name="roomcast-client-write"),
        ]

    def send(self, frame: bytes) -> None:
        """Queue an encoded request; the writer sends everything queued as one frame."""
        self._out.append(frame)
        self._wake.set()

    async def _read(self, handler: Handler) -> None:
        try:
            while True:
                frame = await self.ws.recv(decode=False)
                for message in _decode(self._codec, self._raw, frame):
                    if isinstance(message, ErrorReply) and message.ref is msgspec.UNSET:
                        self.last_error = message
                    handler(message)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            self.close_code = rcvd.code if rcvd is not None else CLOSE_ABNORMAL
            self.close_reason = rcvd.reason if rcvd is not None else "connection lost"
        except Exception:  # a bug in a handler must not leave a dead link looking alive
            log.exception("roomcast client: reading from the server failed")
            self.close_code = CLOSE_ABNORMAL
            self.close_reason = "client error while reading"
            self.ws.transport.abort()
        finally:
            self._finish()

    async def _write(self) -> None:
        join = self._codec.join
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._out:
                    await self.ws.send(join(self._take_batch()), text=self._text)
        except ConnectionClosed:
            pass  # the reader sees it too and ends the link
        except Exception:
            log.exception("roomcast client: writing to the server failed")
            self.ws.transport.abort()

    def _take_batch(self) -> list[bytes]:
        return take_batch(self._out, MAX_BATCH_MESSAGES, self._batch_bytes)

    def terminal_error(self) -> BaseException | None:
        """Why reconnecting after this link ended cannot help (None: reconnect)."""
        error = self.last_error
        if self.close_code == CLOSE_AUTH or (error is not None and error.code == Unauthorized.code):
            return AuthError(error.message if error is not None else self.close_reason)
        if self.close_code in TERMINAL_CLOSE_CODES:
            if error is not None:
                return error_from_reply(error)
            return ClientClosed(f"the server closed the connection: {self.close_reason}")
        return None

    def _finish(self) -> None:
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self.done.set()

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (the server keeps presence for the
        grace period, as for any lost connection)."""
        self.ws.transport.abort()

    async def close(self) -> None:
        """Close cleanly: a close frame, so the server ends our presence at once."""
        with contextlib.suppress(Exception):
            await self.ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.done.set()


def _upgrade_refusal(response: Response) -> RoomcastError | None:
    """The typed error for an upgrade refused with an HTTP status the client acts on: 503 (the
    server is full: retry after a while) and 401 (credentials: do not retry). None for any
    other status."""
    status = response.status_code
    if status not in (Unauthorized.code // 100, Unavailable.code // 100):
        return None
    error = error_from_http(status, bytes(response.body or b""), "the WebSocket upgrade")
    if status == Unavailable.code // 100:
        return Overloaded(error.message, retry_after_s(response.headers.get("Retry-After")))
    return error


def retry_after_s(value: str | None) -> float | None:
    """The seconds a ``Retry-After`` header asks for (delay-seconds or an HTTP date); None
    if there is none or it cannot be read."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def request_encoder(fmt: Format) -> Callable[[Request], bytes]:
    """How requests are encoded for ``fmt``."""
    return msgspec.json.encode if fmt == "json" else msgspec.msgpack.encode


def _raw_decoder(fmt: Format) -> Any:
    return msgspec.json.Decoder() if fmt == "json" else msgspec.msgpack.Decoder()


def _decode(codec: Any, raw: Any, frame: bytes | str) -> list[ServerMessage]:
    """A frame's messages. A message this SDK version does not know (a newer server) is
    skipped instead of failing the frame."""
    try:
        messages: list[ServerMessage] = codec.decode_reply(frame)
        return messages
    except msgspec.ValidationError:
        decoded = raw.decode(frame)
    out: list[ServerMessage] = []
    for item in decoded if isinstance(decoded, list) else [decoded]:
        try:
            out.append(msgspec.convert(item, ServerMessage))
        except msgspec.ValidationError as exc:
            log.debug("skipping a server message this client does not know: %s", exc)
    return out
