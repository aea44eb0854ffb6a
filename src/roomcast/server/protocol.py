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
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

DIRECT_SEND = "roomcast.direct_send"


class RoomcastWebSocketProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope: Any = getattr(self, "scope", None)
        if isinstance(scope, dict):
            scope.setdefault("extensions", {})[DIRECT_SEND] = self.direct_send

    def direct_send(self, data: bytes, text: bool) -> bool:
        """Write one frame now if the socket takes it; False (nothing written) otherwise."""
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or not self.writable.is_set()
            or self.transport.is_closing()
        ):
            return False
        if text:
            self.conn.send_text(data)
        else:
            self.conn.send_binary(data)
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handshake_complete and getattr(self.conn, "close_rcvd", None) is None:
            self.queue.put_nowait({"type": "websocket.disconnect", "code": 1006})
        super().connection_lost(exc)
