"""The uvicorn WebSocket protocol that ``roomcast serve`` runs.

Two additions to uvicorn's:

- ASGI reports a lost TCP connection and a close frame without a status code alike (1005).
  Presence needs to tell them apart (§4: a clean close leaves at once, a drop waits for the
  grace period), so a connection lost without a close frame is reported as 1006, as RFC 6455
  §7.1.5 names it.
- Fan-out writes one frame to many sockets per event batch. Through ASGI each write is an
  awaited ``send`` (a task switch, a dict, and a str round trip for text frames); the
  ``roomcast.direct_send`` scope extension writes already-encoded bytes to the socket at once
  when it can take them, as ``websockets.broadcast`` does. The app falls back to ASGI
  ``send`` when the extension is absent (another ASGI server) or the socket is backed up.

It also swaps two asyncio primitives for slimmer ones, because idle connections are mostly
their bookkeeping (see the memory figures in docs/benchmarks.md).

uvicorn's public API (``uvicorn.Config``, ``Server``, ``run``) takes a protocol class as
``Config(ws=...)`` but offers no hook into one: no event for a lost connection, no access to
its transport or its websockets connection. So this subclasses the implementation behind
``ws="websockets-sansio"`` and reads its attributes (``conn``, ``transport``, ``queue``,
``writable``, ``handshake_complete``, ``close_sent``, ``disconnected``). The pin in
pyproject.toml (``uvicorn>=0.54,<0.60``) keeps a release that may change them from being
installed unnoticed: widening it is a deliberate step, checked by the WebSocket tests, which
run ``roomcast serve`` (dropped connections included).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

DIRECT_SEND = "roomcast.direct_send"
_HEADER16 = struct.Struct("!BBH")
_HEADER64 = struct.Struct("!BBQ")


class _ReceiveQueue:
    """``asyncio.Queue`` as uvicorn uses it here (one consumer: the ASGI ``receive``), without
    its three deques: an idle connection is mostly this bookkeeping."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class _Flag:
    """``asyncio.Event`` without a deque until someone waits (the socket's ``writable``)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        await waiter
        return True


class RoomcastWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, with 1006 for a lost connection and the
    ``roomcast.direct_send`` scope extension; pass it as ``uvicorn.Config(ws=...)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _ReceiveQueue()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]
        self.writable.set()

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope: Any = getattr(self, "scope", None)
        if isinstance(scope, dict):
            scope.setdefault("extensions", {})[DIRECT_SEND] = self.direct_send

    def direct_send(self, data: bytes, text: bool) -> bool:
        """Write one frame now if the socket takes it; False (nothing written) otherwise.

        A server's data frame is a 2-10 byte header and the payload (unmasked, RFC 6455
        §5.2), so it is written as that, without a Frame object per subscriber. The
        websockets protocol object keeps no state about sent data frames, only about
        fragmentation and extensions, and both are checked here.
        """
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or not self.writable.is_set()
            or self.transport.is_closing()
        ):
            return False
        conn = self.conn
        if conn.state is not State.OPEN or conn.extensions:
            if conn.state is not State.OPEN:
                return False
            (conn.send_text if text else conn.send_binary)(data)  # deflate: the slow way
            self.transport.write(b"".join(conn.data_to_send()))
            return True
        size = len(data)
        first = 0x81 if text else 0x82  # FIN + text / binary
        if size < 126:
            header = bytes((first, size))
        elif size < 65536:
            header = _HEADER16.pack(first, 126, size)
        else:
            header = _HEADER64.pack(first, 127, size)
        self.transport.write(header + data)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handshake_complete and getattr(self.conn, "close_rcvd", None) is None:
            self.queue.put_nowait({"type": "websocket.disconnect", "code": 1006})
        super().connection_lost(exc)
