"""The Starlette application: routes, and the node's lifetime as the app's lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from roomcast.backends import StoreOptions, open_backend
from roomcast.core.node import Node
from roomcast.settings import Settings

from .websocket import websocket_endpoint

log = logging.getLogger("roomcast.server")


async def healthz(request: Request) -> JSONResponse:
    """The process is up."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """The store answers; 503 with the reason otherwise."""
    node: Node = request.app.state.node
    try:
        await node.store.ping()
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "reason": str(exc)}, status_code=503)
    return JSONResponse({"status": "ok"})


def create_app(settings: Settings | None = None, *, manage_node: bool = True) -> Starlette:
    """An ASGI app serving ``settings`` (default: from the environment).

    With ``manage_node`` the app's lifespan starts and stops the node (and so opens and
    flushes the store); ``roomcast serve`` does that itself, to report store errors plainly.
    """
    settings = settings or Settings.load()
    store = open_backend(
        settings.store_url,
        StoreOptions(
            dedup_window_s=settings.dedup_window_s, max_stream_bytes=settings.max_stream_bytes
        ),
    )
    node = Node(store, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not manage_node:
            yield
            return
        await node.start()
        log.info("store %s is open", settings.store_url)
        try:
            yield
        finally:
            await node.stop()
            log.info("store %s is flushed and closed", settings.store_url)

    app = Starlette(
        routes=[
            WebSocketRoute("/v1/ws", websocket_endpoint),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
        ],
        lifespan=lifespan,
    )
    app.state.node = node
    app.state.settings = settings
    return app
