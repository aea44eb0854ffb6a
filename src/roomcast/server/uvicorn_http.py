"""The uvicorn HTTP protocol that ``roomcast serve`` runs: uvicorn's httptools protocol with
a deadline on request headers, and half-open connections counted as connections.

uvicorn closes a kept-alive connection that stays idle between requests
(``timeout_keep_alive``), but sets no deadline on a request's headers: a client that sends
half a request line, or one header line every few seconds (slowloris), holds its connection,
its buffers and a file descriptor for good. Here every request has ``header_timeout_s`` from
the moment its connection is accepted (or, on a kept-alive connection, from the first byte of
the next request) to its last header line. The deadline is not moved by data that trickles
in. Past it, a request that had begun is answered 408 and the connection closed; a
connection that sent nothing is closed without a word. The 408 is followed by a half-close,
and what the client still sends is read and dropped until it closes too, or for
``LINGER_S`` at most (nginx's "lingering close"): closing a socket that has unread data
resets the connection, and the client could lose the answer.

Until its first request's headers are complete a connection is half-open. Half-open
connections count against ``max_connections`` (``Overload.half_open``): while they fill it,
one more WebSocket upgrade and the ``/v1`` HTTP routes answer 503, as with any other
connections, and each of them frees its place at its deadline at the latest.

An upgrade request goes to a WebSocket protocol that takes it as parsed
(:class:`ParsedUpgrades`, as ``uvicorn_websocket``'s does) without being written out again
as bytes for websockets to read a second time.

Like ``uvicorn_websocket``, this subclasses the implementation behind ``http="httptools"``
(``uvicorn.Config(http=...)`` takes a protocol class, but offers no hook into one) and uses
its parser callbacks and attributes (``loop``, ``transport``, ``cycle``); the pin on uvicorn
in pyproject.toml keeps a release that may change them from being installed unnoticed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, ClassVar, Protocol, runtime_checkable

from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import is_ssl

from .overload import Overload

LINGER_S = 2.0
"""How long a connection answered 408 keeps reading (and dropping) what its client sends."""

_REASON = b"the request headers took too long\n"
_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_REASON), _REASON)
)


Address = tuple[str, int | None]  # a Unix socket's has no port


def transport_addresses(
    transport: asyncio.BaseTransport,
) -> tuple[Address | None, tuple[str, int] | None]:
    """The local and the remote address of a connection, as uvicorn's ``get_local_addr``
    and ``get_remote_addr`` give them (host and port; a Unix socket's path and None), read
    from the transport's ``sockname`` and ``peername``. uvicorn asks the transport's socket
    object instead, two system calls that each let go of the interpreter lock; winning it
    back while the store's threads are busy (thousands of clients attaching at once after a
    restart) made them a tenth of the event loop's time during a resume."""
    local = transport.get_extra_info("sockname")
    server = (local, None) if isinstance(local, str) else _host_port(local)
    return server, _host_port(transport.get_extra_info("peername"))


def _host_port(info: Any) -> tuple[str, int] | None:
    if isinstance(info, list | tuple) and len(info) >= 2:  # IPv6 adds two more
        return (str(info[0]), int(info[1]))
    return None


def trace_connection_made(
    logger: logging.Logger, client: tuple[str, int] | None, what: str
) -> None:
    """uvicorn's log line for a new connection, at its TRACE level."""
    if logger.level <= TRACE_LOG_LEVEL:
        prefix = f"{client[0]}:{client[1]} - " if client else ""
        logger.log(TRACE_LOG_LEVEL, "%s%s connection made", prefix, what)


class RoomcastHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline; make one with
    :func:`http_protocol` and pass it as ``uvicorn.Config(http=...)``."""

    overload: ClassVar[Overload | None] = None
    header_timeout_s: ClassVar[float] = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._half_open = False  # counted in overload.half_open
        self._begun = False  # a request has begun and its headers are not complete
        self._linger: asyncio.TimerHandle | None = None  # answered 408, closing

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn's, with the addresses from transport_addresses()
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        self.server, self.client = transport_addresses(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        trace_connection_made(self.logger, self.client, "HTTP")
        if self.overload is not None:
            self.overload.half_open += 1
            self._half_open = True
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = True
        self._arm()  # the next request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._disarm()
        self._begun = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._linger is None:
            super().data_received(data)  # else answered 408: dropped

    def handle_websocket_upgrade(self) -> None:
        ws_class: Any = self.ws_protocol_class
        if not _takes_parsed_upgrades(ws_class):
            super().handle_websocket_upgrade()
        else:  # uvicorn's, but the request goes over as parsed, not as bytes to read again
            if self.logger.level <= TRACE_LOG_LEVEL:
                prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
                self.logger.log(TRACE_LOG_LEVEL, "%sUpgrading to WebSocket", prefix)
            self.connections.discard(self)
            protocol = ws_class(
                config=self.config, server_state=self.server_state, app_state=self.app_state
            )
            protocol.connection_made(self.transport)
            self.transport.set_protocol(protocol)
            protocol.upgrade(self.scope["method"], self.url, self.headers)
        # The WebSocket protocol has the transport now. This one's parser refers back to it
        # (its callbacks): without the cycle it is freed now, not by a garbage collector pass
        # (about 25 objects per connection, a resume storm's worth at once).
        self.parser = None  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if self._half_open and self.overload is not None:
            self._half_open = False
            self.overload.half_open -= 1

    def _timed_out(self) -> None:
        self._header_timer = None
        self._disarm()
        transport = self.transport
        if transport.is_closing():
            return
        cycle = self.cycle
        if self._begun and (cycle is None or cycle.response_complete) and transport.can_write_eof():
            transport.write(_TIMED_OUT)  # not in the middle of another response
            transport.write_eof()  # the client sees the end; the close comes when it closes
            self._linger = self.loop.call_later(LINGER_S, transport.close)
            return
        transport.close()


@runtime_checkable
class ParsedUpgrades(Protocol):
    """A WebSocket protocol that takes an upgrade request as uvicorn's HTTP protocol has
    parsed it (``RoomcastWebSocketProtocol``), instead of as bytes to parse again."""

    def upgrade(self, method: str, url: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """Open the connection from the request's method, target and headers."""
        ...


@functools.cache
def _takes_parsed_upgrades(ws_protocol_class: type | None) -> bool:
    # once per class: isinstance() against a Protocol costs microseconds per connection
    return ws_protocol_class is not None and issubclass(ws_protocol_class, ParsedUpgrades)


def http_protocol(overload: Overload, header_timeout_s: float) -> type[RoomcastHttpProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``: its connections are counted in
    ``overload`` while half-open, and have ``header_timeout_s`` to send their headers."""
    return type(
        "RoomcastHttpProtocol",
        (RoomcastHttpProtocol,),
        {"overload": overload, "header_timeout_s": header_timeout_s},
    )


__all__ = ["ParsedUpgrades", "RoomcastHttpProtocol", "http_protocol"]
