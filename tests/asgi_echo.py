"""An ASGI WebSocket app for the tests of the uvicorn protocols: it accepts, then sends back
each text it receives."""

from __future__ import annotations

from typing import Any


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "websocket"
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message["text"]})
