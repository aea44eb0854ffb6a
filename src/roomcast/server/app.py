"""The Starlette application: routes, and the node's lifetime as the app's lifespan.

:data:`API_TABLES` lists every API table once; the router and the OpenAPI document both
read it, so they cannot drift apart.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from roomcast.backends import StoreOptions, open_backend
from roomcast.core.node import Node
from roomcast.protocol.errors import BadRequest, Forbidden, Unavailable
from roomcast.protocol.http import ErrorBody, HealthStatus
from roomcast.protocol.messages import CHANNEL_PATTERN
from roomcast.settings import Settings

from . import ag_ui, ai_sdk, rest, sse, web
from . import agents as agent_routes
from . import mcp as mcp_routes
from . import metrics as metrics_routes
from . import objects as object_routes
from . import openapi as openapi_routes
from .api import Api, Call, Param, Returns
from .auth import CLIENT_ID_HEADER
from .errors import (
    error_response,
    http_exception_handler,
    json_response,
    unhandled_exception_handler,
)
from .mcp import McpEndpoint, with_mcp
from .metrics import Metrics, RequestMetrics
from .overload import Overload, SheddingStore
from .sse import EventStreams
from .websocket import HOST_REFUSED, host_of, websocket_endpoint

log = logging.getLogger("roomcast.server")
Lifespan = Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]

# Only the API is shed under overload: probes, metrics, the API document and the UI answer.
SHED_PREFIX = "/v1/"
WEBSOCKET_PATH = "/v1/ws"

system = Api()


@system.operation(
    "GET",
    "/healthz",
    summary="The process is up",
    tag="operations",
    authenticated=False,
    returns=(Returns("200", "Always `ok` while the process serves.", (HealthStatus,)),),
)
async def healthz(call: Call) -> HealthStatus:
    return HealthStatus(status="ok")


@system.operation(
    "GET",
    "/readyz",
    summary="The store answers and the agents this server runs are up",
    tag="operations",
    authenticated=False,
    returns=(
        Returns(
            "200", "The store answered, and the server's own agents are running.", (HealthStatus,)
        ),
        Returns(
            "503",
            "The store did not answer, or the server's agents are still starting; `reason` "
            "says which.",
            (HealthStatus,),
        ),
    ),
)
async def readyz(call: Call) -> Response | HealthStatus:
    if not call.request.app.state.agents_ready:
        reason = "the agents are starting"
        return json_response(HealthStatus(status="unavailable", reason=reason), status=503)
    try:
        await call.node.store.ping()
    except Exception as exc:
        return json_response(HealthStatus(status="unavailable", reason=str(exc)), status=503)
    return HealthStatus(status="ok")


system.document(
    "GET",
    WEBSOCKET_PATH,
    summary="The WebSocket protocol (an upgrade request)",
    description=(
        "Upgrade to a WebSocket that speaks docs/protocol.md §2: JSON frames (or MessagePack "
        "with `format=msgpack`), each a protocol message or an array of them."
    ),
    tag="websocket",
    authenticated=False,
    params=(
        Param(
            "client_id",
            "query",
            "Your client id (anonymous access, or with a key); made up if absent.",
            {"type": "string", "pattern": CHANNEL_PATTERN},
        ),
        Param("resume", "query", "A `resume_key` from an earlier `connected`."),
        Param(
            "format",
            "query",
            "The wire format.",
            {"enum": ["json", "msgpack"], "default": "json"},
        ),
        Param("token", "query", "A signed token; the connection closes (4001) when it expires."),
        Param("key", "query", "An API key `NAME:SECRET`; `client_id` (default `key:NAME`)."),
    ),
    returns=(
        Returns("101", "Switching Protocols: the WebSocket is open."),
        Returns(
            "503",
            "The server holds `max_connections` connections (50300); retry after "
            "`Retry-After` seconds, or on another server.",
            (ErrorBody,),
        ),
    ),
)


class RoomcastApp(Starlette):
    """The Starlette app, with ``/v1/ws`` dispatched straight to its endpoint.

    A WebSocket lives for hours; going through the middleware stack would keep seven
    coroutine frames of it alive per connection for nothing (those layers act on HTTP).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.state.settings.host_allowed(host_of(scope)):
            # Before any work: a page whose name was rebound to this address (DNS
            # rebinding) must neither read nor write.
            await error_response(Request(scope), BadRequest(HOST_REFUSED))(scope, receive, send)
            return
        if scope["type"] == "websocket" and scope["path"] == WEBSOCKET_PATH:
            scope["app"] = self
            await websocket_endpoint(WebSocket(scope, receive, send))
            return
        if (
            scope["type"] == "http"
            and scope["path"].startswith(SHED_PREFIX)
            and scope["method"] != "OPTIONS"
        ):
            overload: Overload = self.state.overload
            shed = overload.reason()
            if shed is not None:
                message, retry_after = shed
                response = error_response(Request(scope), Unavailable(message))
                response.headers["Retry-After"] = str(retry_after)
                await response(scope, receive, send)
                return
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            # CORS headers only stop a page from reading the answer; a write from a page of
            # another origin is refused before it runs.
            request = Request(scope)
            settings: Settings = self.state.settings
            origin = request.headers.get("origin")
            if not settings.origin_allowed(origin, request.headers.get("host"), scope["scheme"]):
                refusal = Forbidden(f"origin {origin} is not in allowed_origins")
                await error_response(request, refusal)(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


@dataclass(frozen=True, slots=True)
class ApiTable:
    """An API table in the app: the router serves its operations and the OpenAPI document
    lists them; ``served_elsewhere`` gives the routes of those it only documents."""

    api: Api
    served_elsewhere: Callable[[Settings], list[BaseRoute]] = lambda settings: []

    def routes(self, settings: Settings) -> list[BaseRoute]:
        return [*self.served_elsewhere(settings), *self.api.routes()]


# Every API table, in the document's order: a new transport adds itself here.
API_TABLES = (
    ApiTable(system, lambda settings: [WebSocketRoute(WEBSOCKET_PATH, websocket_endpoint)]),
    ApiTable(rest.api),
    ApiTable(object_routes.api),
    ApiTable(agent_routes.api),
    ApiTable(sse.api),
    ApiTable(ai_sdk.api),
    ApiTable(ag_ui.api),
    ApiTable(mcp_routes.api, lambda settings: mcp_routes.routes()),
    ApiTable(metrics_routes.api),
    ApiTable(openapi_routes.api),
    ApiTable(web.api, lambda settings: web.routes(settings.auth_url)),  # `/`, `/static/...`
)


def open_store(settings: Settings, metrics: Metrics, overload: Overload) -> SheddingStore:
    """The store of ``settings.store_url``, shedding work under overload."""
    options = StoreOptions(
        dedup_window_s=settings.dedup_window_s,
        max_message_bytes=settings.max_message_bytes,
        max_stream_bytes=settings.max_stream_bytes,
        max_objects_bytes=settings.max_objects_bytes,
    )
    return SheddingStore(open_backend(settings.store_url, options), metrics, overload)


def node_lifespan(node: Node, streams: EventStreams, settings: Settings) -> Lifespan:
    """The app's lifespan: it starts the node (opening the store) and, at shutdown, ends the
    SSE streams and stops the node (flushing the store)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await node.start()
        log.info("store %s is open", settings.store_shown)
        try:
            yield
        finally:
            streams.close_all()
            await node.stop()
            log.info("store %s is flushed and closed", settings.store_shown)

    return lifespan


@contextlib.asynccontextmanager
async def unmanaged_lifespan(app: Starlette) -> AsyncIterator[None]:
    """The lifespan of an app whose node is started and stopped by its caller."""
    yield


def middleware(settings: Settings, metrics: Metrics) -> list[Middleware]:
    """Request metrics, then CORS for the origins of ``settings`` (a page may send MCP's
    headers and read its session id)."""
    return [
        Middleware(RequestMetrics, metrics=metrics),
        Middleware(
            CORSMiddleware,
            allow_origins=sorted(settings.origins),
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                CLIENT_ID_HEADER,
                "Last-Event-ID",
                *mcp_routes.CORS_ALLOW_HEADERS,
            ],
            expose_headers=["X-Correlation-Id", *mcp_routes.CORS_EXPOSE_HEADERS],
        ),
    ]


def create_app(settings: Settings | None = None, *, manage_node: bool = True) -> Starlette:
    """An ASGI app serving ``settings`` (default: from the environment).

    With ``manage_node`` the app's lifespan starts and stops the node (and so opens and
    flushes the store); ``roomcast serve`` does that itself, to report store errors plainly.
    """
    settings = settings or Settings.load()
    metrics = Metrics()
    streams = EventStreams()
    overload = Overload(settings, streams)
    node = Node(open_store(settings, metrics, overload), settings)
    metrics.watch(node, streams)
    mcp = McpEndpoint(node)  # MCP's Streamable HTTP (docs/mcp.md)
    app = RoomcastApp(
        routes=[route for table in API_TABLES for route in table.routes(settings)],
        middleware=middleware(settings, metrics),
        exception_handlers={
            HTTPException: http_exception_handler,
            Exception: unhandled_exception_handler,
        },
        lifespan=with_mcp(
            mcp, node_lifespan(node, streams, settings) if manage_node else unmanaged_lifespan
        ),
    )
    app.state.node = node
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.event_streams = streams
    app.state.overload = overload
    app.state.mcp = mcp
    app.state.agents_ready = True  # `roomcast serve` clears it while its agents start
    app.state.operations = [op for table in API_TABLES for op in table.api.operations]
    return app
