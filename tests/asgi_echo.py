"""For the tests of the uvicorn protocols: an ASGI WebSocket app that accepts, then sends
back each text it receives, and uvicorn serving an app in the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from polling import eventually
from roomcast.testing import free_port


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "websocket"
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message["text"]})


@contextlib.asynccontextmanager
async def uvicorn_serving(app: Any, **config: Any) -> AsyncIterator[tuple[int, uvicorn.Server]]:
    """uvicorn serving ``app`` on a free port of 127.0.0.1 (``config``: more of
    ``uvicorn.Config``'s arguments), until the block ends; the port and the server."""
    port = free_port()
    config.setdefault("log_level", "warning")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **config))
    serving = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started)
        yield port, server
    finally:
        server.should_exit = True
        await serving
