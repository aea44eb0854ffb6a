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
their bookkeeping (see the memory figures in docs/benchmarks.md), and sends its keepalive pings
with the frames the app writes instead of on a timer of their own: once a ping is due (every
``ws_ping_interval``, from the last pong), it goes out in the same write as the next frame,
which on an idle connection is the app's ``heartbeat`` (every ``heartbeat_s``). An idle
connection then costs one write per period, not two, and no ping timer. The pong deadlines
(``ws_ping_timeout``) of all connections share one timer (:class:`PongDeadlines`); the 1011
close at a deadline is uvicorn's.

With ``roomcast serve``'s HTTP protocol (``uvicorn_http``), a plain upgrade request comes
in as that protocol parsed it (:meth:`RoomcastWebSocketProtocol.upgrade`), and its 101 is
written as bytes (``ws_handshake``); websockets reads only the requests that are not plain,
and answers them as before.

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
import logging
import random
import struct
import weakref
from collections import deque
from typing import Any
from urllib.parse import unquote

from uvicorn.protocols.utils import (
    ClientDisconnected,
    get_client_addr,
    get_path_with_query_string,
    is_ssl,
)
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame
from websockets.protocol import Protocol, State

from .uvicorn_http import trace_connection_made, transport_addresses
from .ws_handshake import accept_key, plain_upgrade_key, switching_protocols

log = logging.getLogger("roomcast.server")

DIRECT_SEND = "roomcast.direct_send"
_HEADER16 = struct.Struct("!BBH")
_HEADER64 = struct.Struct("!BBQ")
_PING_HEADER = bytes((0x89, 4))


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

    __slots__ = ("_waiters", "value")

    def __init__(self) -> None:
        self.value = False  # what is_set() says, read as an attribute on the hot path
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self.value

    def set(self) -> None:
        self.value = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self.value = False

    async def wait(self) -> bool:
        if self.value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        await waiter
        return True


class PongDeadlines:
    """When each ping in flight must have its pong, for the connections of one event loop
    with one ``ping_timeout``, and one timer for all of them: a timer per ping (a timer
    handle and a libuv timer, made and cancelled every period) was a tenth of an idle
    server's CPU. Every ping here waits the same time, so deadlines come in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._queue: deque[tuple[float, RoomcastWebSocketProtocol, bytes]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, protocol: RoomcastWebSocketProtocol, payload: bytes) -> None:
        """``protocol`` sent the ping ``payload`` now; it fails if no pong has answered it
        (its ``pending_ping_payload`` is still that very object) by the deadline."""
        deadline = self._loop.time() + self._timeout
        self._queue.append((deadline, protocol, payload))
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        queue, now = self._queue, self._loop.time()
        while queue and queue[0][0] <= now:
            _, protocol, payload = queue.popleft()
            if protocol.pending_ping_payload is payload:
                try:
                    protocol.keepalive_timeout()  # uvicorn's: a 1011 close
                except Exception:  # one connection's failure must not stall the others
                    log.exception("closing a connection whose ping went unanswered failed")
        if queue:
            self._timer = self._loop.call_at(queue[0][0], self._expire)


_PONG_DEADLINES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, PongDeadlines]]
_PONG_DEADLINES = weakref.WeakKeyDictionary()


def pong_deadlines(loop: asyncio.AbstractEventLoop, timeout: float) -> PongDeadlines:
    by_timeout = _PONG_DEADLINES.setdefault(loop, {})
    found = by_timeout.get(timeout)
    if found is None:
        found = by_timeout[timeout] = PongDeadlines(loop, timeout)
    return found


class _Holding:
    """The transport of a connection whose handshake response is held (see
    :meth:`RoomcastWebSocketProtocol.send`): writes are kept, in order, until
    :meth:`release` writes them all at once; the rest is the transport's."""

    __slots__ = ("held", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.held: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.held.append(data)

    def close(self) -> None:
        self.release()
        self.transport.close()

    def release(self) -> asyncio.Transport:
        """Write what is held, in one write; the transport, to use from now on."""
        if self.held:
            data = b"".join(self.held)
            self.held.clear()
            if not self.transport.is_closing():
                self.transport.write(data)
        return self.transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class RoomcastWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, with 1006 for a lost connection and the
    ``roomcast.direct_send`` scope extension; pass it as ``uvicorn.Config(ws=...)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _ReceiveQueue()  # type: ignore[assignment]
        self._writable = _Flag()  # typed as ours, read without a method call per write
        self._writable.set()
        self.writable = self._writable  # type: ignore[assignment]
        self.ping_due: float | None = None  # loop time from which a ping goes with a frame
        self._holding = False  # the handshake's response waits for the first frame
        self._accept: bytes | None = None  # Sec-WebSocket-Accept, once upgrade() took a request

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvicorn's, with the addresses from transport_addresses()
        self.connections.add(self)
        self.transport = transport  # type: ignore[assignment]
        self.server, self.client = transport_addresses(transport)
        self.scheme = "wss" if is_ssl(transport) else "ws"  # type: ignore[arg-type]
        trace_connection_made(self.logger, self.client, "WebSocket")

    def schedule_ping(self) -> None:
        """The next ping is due ``ping_interval`` after the last one (less its round trip),
        to go out with the first frame written from then on (no timer)."""
        assert self.ping_interval is not None
        self.ping_due = self.loop.time() + max(0.0, self.ping_interval - self.last_ping_rtt)

    def start_keepalive(self) -> None:
        # Called once the 101 response is written. uvicorn reads the handshake's request and
        # response only before that; dropped here, an open connection does not keep them
        # (about 20 objects and 2 KB each, for the garbage collector to walk). websockets'
        # parser still holds the request for the connection's life, so its headers (copied
        # into the ASGI scope already) are emptied too.
        if self.request is not None:
            self.request.headers.clear()
        self.request = self.response = None  # type: ignore[assignment]
        super().start_keepalive()

    def stop_keepalive(self) -> None:
        self.ping_due = None
        self.pending_ping_payload = None  # its deadline, in PongDeadlines, is void
        super().stop_keepalive()

    def _ping_if_due(self) -> bytes:
        """A ping frame to write with the frame at hand if one is due, else nothing; its
        pong deadline starts now."""
        due = self.ping_due
        if due is None or self.loop.time() < due or self.pending_ping_payload is not None:
            return b""
        self.ping_due = None  # the pong schedules the next
        # A random payload identifies this ping: handle_pong ignores stale or unsolicited pongs.
        self.pending_ping_payload = struct.pack("!I", random.getrandbits(32))
        self.ping_sent_at = self.loop.time()
        if self.ping_timeout is not None:
            pong_deadlines(self.loop, self.ping_timeout).add(self, self.pending_ping_payload)
        else:
            self.schedule_ping()  # no deadline: the next one is due regardless
        # A server's ping, as websockets' send_ping frames it: FIN + opcode 9, the unmasked
        # 4-byte payload. No extension touches a control frame (RFC 7692 §6), and callers
        # write it only while the connection is open.
        return _PING_HEADER + self.pending_ping_payload

    def upgrade(self, method: str, url: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """Open the connection from an upgrade request that uvicorn's HTTP protocol has read.

        A plain request (:func:`~roomcast.server.ws_handshake.plain_upgrade_key`) is taken
        as parsed: the app gets its scope, and the 101 is written as bytes when it accepts.
        Any other goes to websockets as bytes, as uvicorn hands it over, for its answer.
        """
        conn = self.conn
        # websockets' debug log shows each request it reads: with it on, it reads them all
        plain = not (conn.available_extensions or conn.debug)
        key = plain_upgrade_key(method, url, headers) if plain else None
        if key is None:
            lines = [b"%s %s HTTP/1.1\r\n" % (method.encode(), url)]
            lines.extend(b"%s: %s\r\n" % header for header in headers)
            self.data_received(b"".join(lines) + b"\r\n")
            return
        # websockets' parser reads frames from here, as it does once it has read a request
        conn.parser = Protocol.parse(conn)
        next(conn.parser)
        conn.accept_called = True  # its log then says "connection rejected" for a refusal
        self._accept = accept_key(key)
        self.handshake_initiated = True
        self.request = self.response = None  # type: ignore[assignment]
        raw_path, _, query_string = url.partition(b"?")
        path = raw_path.decode("ascii")
        extensions: dict[str, Any] = {"websocket.http.response": {}, DIRECT_SEND: self.direct_send}
        self.scope = {  # uvicorn's, as handle_connect() makes it
            "type": "websocket",
            "asgi": {"version": self.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": self.scheme,
            "server": self.server,
            "client": self.client,
            "root_path": self.root_path,
            "path": self.root_path + (unquote(path) if "%" in path else path),
            "raw_path": self.root_path.encode("ascii") + raw_path,
            "query_string": query_string,
            "headers": headers,
            "subprotocols": [],
            "state": self.app_state.copy(),
            "extensions": extensions,
        }
        self.queue.put_nowait({"type": "websocket.connect"})
        task = self.loop.create_task(self.run_asgi())
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)

    async def send(self, message: Any) -> None:
        """uvicorn's, but the 101 response is not written alone: it goes out in the same
        write as the app's first frame (``connected``, which the fan-out writes a turn of
        the loop later), or by itself two turns later. One write less per connection (a
        connect storm's CPU). Whatever is written meanwhile (a pong, a close) follows it in
        order."""
        accepting = message["type"] == "websocket.accept" and not self.handshake_complete
        if accepting and self.initial_response is None:
            if not self._holding:
                self._holding = True
                self.transport = _Holding(self.transport)  # type: ignore[assignment]
                self.loop.call_soon(self.loop.call_soon, self._release)
            if self._accept is not None:
                await self._switch_protocols(message, self._accept)
                return
        await super().send(message)  # uvicorn's answer to the rest, errors included

    async def _switch_protocols(self, message: Any, accept: bytes) -> None:
        """uvicorn's answer to ``websocket.accept``, for a request that :meth:`upgrade` took:
        the 101 with uvicorn's default headers and the app's."""
        await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected()
        if self.logger.isEnabledFor(logging.INFO):
            client, path = get_client_addr(self.scope), get_path_with_query_string(self.scope)
            self.logger.info('%s - "WebSocket %s" [accepted]', client, path)
        given = [*self.default_headers, *message.get("headers", ())]
        headers = [(name.lower(), value) for name, value in given]
        if subprotocol := message.get("subprotocol"):
            headers.append((b"Sec-WebSocket-Protocol", subprotocol.encode("latin-1")))
        response = switching_protocols(accept, headers)  # a bad header raises, as before
        if not self.transport.is_closing():
            self.handshake_complete = True
            self.conn.state = State.OPEN
            self.conn.logger.info("connection open")
            self.transport.write(response)
            self.start_keepalive()

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self.transport = self.transport.release()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self._holding:  # a reply to what the client sent goes out at once
            self._release()
        super().data_received(data)

    def handle_pong(self, event: Frame) -> None:
        # uvicorn's, with the deadline in PongDeadlines instead of a timer to cancel
        if self.pending_ping_payload is None or bytes(event.data) != self.pending_ping_payload:
            return  # unsolicited, or the answer to a ping before the one in flight
        self.last_ping_rtt = self.loop.time() - self.ping_sent_at
        self.pending_ping_payload = None
        if self.ping_timeout is not None:
            self.schedule_ping()

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
            or not self._writable.value
            or self.transport.is_closing()
        ):
            return False
        conn = self.conn
        if conn.state is not State.OPEN or conn.extensions:
            if conn.state is not State.OPEN:
                return False
            (conn.send_text if text else conn.send_binary)(data)  # deflate: the slow way
            self.transport.write(b"".join(conn.data_to_send()) + self._ping_if_due())
            if self._holding:
                self._release()
            return True
        size = len(data)
        first = 0x81 if text else 0x82  # FIN + text / binary
        if size < 126:
            header = bytes((first, size))
        elif size < 65536:
            header = _HEADER16.pack(first, 126, size)
        else:
            header = _HEADER64.pack(first, 127, size)
        due = self.ping_due
        if due is None or self.loop.time() < due:
            self.transport.write(header + data)
        else:
            self.transport.write(header + data + self._ping_if_due())
        if self._holding:
            self._release()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handshake_complete and getattr(self.conn, "close_rcvd", None) is None:
            self.queue.put_nowait({"type": "websocket.disconnect", "code": 1006})
        super().connection_lost(exc)
