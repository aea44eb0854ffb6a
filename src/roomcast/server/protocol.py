"""The uvicorn WebSocket protocol that ``roomcast serve`` runs.

ASGI reports a lost TCP connection and a close frame without a status code alike (1005).
Presence needs to tell them apart (§4: a clean close leaves at once, a drop waits for the
grace period), so a connection lost without a close frame is reported as 1006, as RFC 6455
§7.1.5 names it.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class RoomcastWebSocketProtocol(WebSocketsSansIOProtocol):
    def connection_lost(self, exc: Exception | None) -> None:
        if self.handshake_complete and getattr(self.conn, "close_rcvd", None) is None:
            self.queue.put_nowait({"type": "websocket.disconnect", "code": 1006})
        super().connection_lost(exc)
