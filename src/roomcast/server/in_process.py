"""Connections within the server's process: its hosted agents reach the core without a socket.

The agents that ``roomcast serve`` runs are clients like any other, with the SDK and the
protocol's frames, but a loopback WebSocket made each of their requests cost the server a
read and each reply a write, with the framing and the event loop turns around them: a
streamed answer is one request per token. :class:`InProcessDialer` opens a connection to
this node whose frames go through two in-memory pipes instead. The server's side is a
:class:`~roomcast.core.connection.Connection` like a WebSocket's (the same identity check,
rules, replies and delivery, the same ``open_connection`` and ``serve``); the client's side
is what :class:`roomcast.client.link.Link` uses of a WebSocket, given to
:class:`roomcast.client.Client` as its ``dial``.

Each pipe holds at most :data:`PIPE_BYTES`: past that, a writer waits, as it would on a full
socket, so the server's slow-consumer rule and the client's backpressure work unchanged.
Closing behaves as on a WebSocket: a clean close ends the client's presence at once, an
abort leaves it for the grace period, and a close by the server reaches the client (after
the frames sent before it) with its code and reason.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Literal
from urllib.parse import urlsplit

from starlette.datastructures import QueryParams
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from roomcast.core.connection import Frame, open_connection, serve
from roomcast.core.node import Node
from roomcast.protocol.codec import codec_for
from roomcast.protocol.errors import CLOSE_ABNORMAL, CLOSE_NORMAL, RoomcastError

from .websocket import refusal

PIPE_BYTES = 256 * 1024
"""What one direction holds before its writer waits (a socket's buffer, roughly)."""


class _Pipe:
    """Frames one way, in order, then the end: a close code (and its reason), or None for a
    connection lost."""

    __slots__ = ("_bytes", "_end", "_ended", "_frames", "_reader", "_writer")

    def __init__(self) -> None:
        self._frames: deque[tuple[bytes, bool]] = deque()
        self._bytes = 0
        self._ended = False
        self._end: Close | None = None
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None

    def put_nowait(self, frame: bytes, is_text: bool) -> bool:
        """Queue ``frame`` if there is room (after the end it is dropped); False if full."""
        if self._ended:
            return True
        if self._bytes >= PIPE_BYTES:
            return False
        self._frames.append((frame, is_text))
        self._bytes += len(frame)
        _wake(self._reader)
        return True

    async def put(self, frame: bytes, is_text: bool) -> None:
        """Queue ``frame`` once there is room. Raises ConnectionError after the end."""
        while not self.put_nowait(frame, is_text):
            self._writer = _waiter(self._writer)
            await self._writer
        if self._ended:
            raise ConnectionError("the connection is closed")

    async def get(self) -> tuple[bytes, bool] | Close | None:
        """The next frame; after the last one, the end."""
        while not self._frames:
            if self._ended:
                return self._end
            self._reader = _waiter(self._reader)
            await self._reader
        frame = self._frames.popleft()
        self._bytes -= len(frame[0])
        if self._bytes < PIPE_BYTES:
            _wake(self._writer)
        return frame

    def end(self, close: Close | None, *, discard: bool = False) -> None:
        """No frame after this one: the reader gets ``close`` after what is queued (nothing
        more, with ``discard``)."""
        if self._ended:
            return
        self._ended, self._end = True, close
        if discard:
            self._frames.clear()
            self._bytes = 0
        _wake(self._reader)
        _wake(self._writer)


def _waiter(current: asyncio.Future[None] | None) -> asyncio.Future[None]:
    """The future to wait on: the one already pending (another writer waits too), or a new
    one."""
    if current is not None and not current.done():
        return current
    return asyncio.get_running_loop().create_future()


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class InProcessSocket:
    """One in-memory connection. Its public methods are the client's end (what
    :class:`roomcast.client.link.FrameSocket` names); :attr:`server` is the core's."""

    def __init__(self) -> None:
        self._down = _Pipe()  # server to client
        self._up = _Pipe()  # client to server
        self.server = _ServerEnd(self._down, self._up)
        self.serving: asyncio.Task[None] | None = None

    @property
    def transport(self) -> InProcessSocket:
        return self  # abort()

    async def recv(self, decode: Literal[False]) -> bytes:
        """The next frame from the server. Raises ConnectionClosed after the last one."""
        item = await self._down.get()
        if isinstance(item, tuple):
            return item[0]
        raise ConnectionClosed(item, None)

    async def send(self, message: bytes, *, text: bool | None = None) -> None:
        """A frame to the server; waits while the server has :data:`PIPE_BYTES` unread."""
        try:
            await self._up.put(message, bool(text))
        except ConnectionError:
            raise ConnectionClosed(None, Close(CLOSE_NORMAL, "")) from None

    async def close(self) -> None:
        """Close cleanly: the server ends the client's presence at once."""
        self._up.end(Close(CLOSE_NORMAL, ""))
        self._down.end(Close(CLOSE_NORMAL, ""), discard=True)
        await self._served()

    def abort(self) -> None:
        """Drop the connection as if lost: the server keeps presence for the grace period."""
        self._up.end(None)
        self._down.end(None, discard=True)

    def refuse(self, exc: RoomcastError) -> None:
        """Refuse the connection as the WebSocket endpoint does: an ``error``, then a close."""
        frame, code = refusal(exc)
        self._down.put_nowait(frame, True)
        self._down.end(Close(code, exc.message))

    async def _served(self) -> None:
        if self.serving is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self.serving)


class _ServerEnd:
    """The core's :class:`~roomcast.core.subscriber.Transport` over the two pipes."""

    __slots__ = ("_down", "_up", "text")

    def __init__(self, down: _Pipe, up: _Pipe) -> None:
        self._down = down
        self._up = up
        self.text = True

    def send_now(self, frame: bytes) -> bool:
        return self._down.put_nowait(frame, self.text)

    async def send(self, frame: bytes) -> None:
        await self._down.put(frame, self.text)

    async def close(self, code: int, reason: str) -> None:
        self._down.end(Close(code, reason))
        self._up.end(Close(code, reason), discard=True)

    async def receive(self) -> tuple[bytes, bool] | Close | None:
        """The client's next frame, or how it ended (None: lost)."""
        return await self._up.get()


def _frame_of(item: tuple[bytes, bool] | Close | None) -> Frame:
    if isinstance(item, tuple):
        return item
    return CLOSE_ABNORMAL if item is None else item.code


class InProcessDialer:
    """Opens in-memory connections to ``node``: a :data:`roomcast.client.link.Dial`.

    The URL's query is read as ``/v1/ws`` reads it (``key``, ``token``, ``client_id``,
    ``resume``, ``format``); its host and path are not used.
    """

    def __init__(self, node: Node) -> None:
        self.node = node

    async def __call__(self, url: str, open_timeout: float) -> InProcessSocket:
        node = self.node
        params = QueryParams(urlsplit(url).query)
        sock = InProcessSocket()
        try:
            codec = codec_for(params.get("format", "json"))
            sock.server.text = codec.format == "json"
            identity = node.identities.resolve(
                token=params.get("token"),
                key=params.get("key"),
                client_id=params.get("client_id"),
            )
            conn = await open_connection(node, sock.server, codec, identity, params.get("resume"))
        except RoomcastError as exc:
            sock.refuse(exc)
            return sock
        serving = serve(conn, sock.server.receive, _frame_of)
        sock.serving = asyncio.create_task(serving, name="roomcast-local")
        return sock
