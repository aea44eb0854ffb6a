"""``/mcp``: a room as an MCP server, over MCP's Streamable HTTP transport (docs/mcp.md).

The ``mcp`` SDK's low-level :class:`~mcp.server.lowlevel.Server` speaks the protocol, run
by its session manager in stateless mode with JSON responses: every POST is answered by
the node that gets it, and no node keeps anything of a session in memory that another
needs. :class:`McpEndpoint` wraps it with what is roomcast's:

- the caller of every request, from ``Authorization: Bearer <token or NAME:SECRET>`` (or
  anonymous, where allowed, with ``X-Roomcast-Client-Id``), as for REST;
- the session: ``Mcp-Session-Id`` (``server/mcp_sessions.py``), ``DELETE`` to end it;
- ``allowed_origins`` for every method (the app checks ``allowed_hosts`` before routing,
  so the SDK's own DNS-rebinding check is off: one rule, roomcast's settings).

The tools are in ``server/mcp_tools.py``; a refusal by the node is a tool error
(``isError``) with the roomcast code and message, and nothing is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from roomcast.core.authz import Principal
from roomcast.core.identity import Identity, check_client_id
from roomcast.core.node import Node
from roomcast.protocol.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    RoomcastError,
    TooLarge,
    Unauthorized,
)
from roomcast.protocol.messages import History

from .api import Api, Returns
from .auth import CLIENT_ID_HEADER, bearer
from .mcp_sessions import McpSession, McpSessions
from .mcp_subscriptions import SubscriptionSet, UpdateStream, control_channel
from .mcp_tools import TOOLS, ToolCall, shown

log = logging.getLogger("roomcast.mcp")

MCP_PATH = "/mcp"
SESSION_HEADER = "mcp-session-id"
RESOURCE_PREFIX = "roomcast://room/"
MAX_BODY = 4 * 1024 * 1024
TRANSCRIPT_MESSAGES = 100
KEEPALIVE_S = 15.0  # a GET stream with nothing to say sends a comment this often
DRAIN_S = 3.0  # at a stop, how long the requests being answered may take to finish
_SCOPE_KEY = "roomcast.mcp"
# What a browser page needs for /mcp beyond the API's own CORS headers.
CORS_ALLOW_HEADERS = ("Mcp-Session-Id", "MCP-Protocol-Version")
CORS_EXPOSE_HEADERS = ("Mcp-Session-Id",)
_STATUS = {BadRequest: 400, Unauthorized: 401, Forbidden: 403, NotFound: 404, TooLarge: 413}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sends the request an MCP handler serves."""

    principal: Principal
    session: McpSession | None


def mcp_identity(node: Node, request: Request, session_client_id: str | None) -> Identity:
    """As :func:`~roomcast.server.auth.request_identity`, with the session's client id
    when the request names none."""
    header = request.headers.get(CLIENT_ID_HEADER)
    if header is not None:
        check_client_id(header)
    client_id = header or session_client_id
    credential = bearer(request)
    identities = node.identities
    if credential is None:
        token = request.query_params.get("token")
        return identities.resolve(token=token, key=None, client_id=client_id)
    if ":" in credential:
        return identities.key(credential, client_id)
    return identities.token(credential, client_id)


def error_body(status: int, message: str, code: int = -32600) -> Response:
    """A JSON-RPC error without a request id, as the SDK answers transport errors."""
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status)


def _text_result(result: Any) -> types.CallToolResult:
    text = json.dumps(result, ensure_ascii=False)
    structured = result if isinstance(result, dict) else None
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], structured_content=structured
    )


def _tool_error(message: str) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=message)], is_error=True
    )


def room_of(uri: str) -> str:
    """The room a ``roomcast://room/<name>`` URI names (MCP's -32002 otherwise)."""
    room = uri.removeprefix(RESOURCE_PREFIX) if uri.startswith(RESOURCE_PREFIX) else ""
    try:
        check_client_id(room)  # the channel-name rule
    except BadRequest:
        raise MCPError(-32002, f"no such resource: {uri}") from None
    return room


api = Api()
for _method, _summary in (
    ("GET", "The MCP session's stream: notifications/resources/updated, as SSE"),
    ("POST", "MCP over Streamable HTTP: one JSON-RPC message, answered as JSON"),
    ("DELETE", "End an MCP session (its presence leaves every room)"),
):
    api.document(
        _method,
        MCP_PATH,
        summary=_summary,
        description=(
            "The Model Context Protocol's Streamable HTTP transport (docs/mcp.md): the "
            "tools and resources of the rooms, as the caller of `Authorization` (or "
            "anonymous). `Mcp-Session-Id` names the session. Errors are MCP's own (JSON-RPC "
            "error objects, or the transport's 4xx), not this document's error body."
        ),
        tag="mcp",
        returns=(Returns("200", "A JSON-RPC response (or 202 for a notification)."),),
        authenticated=False,  # credentials are read, but refusals are MCP's, not ErrorBody
    )


class McpRoute:
    """The route's ASGI app: the app's :class:`McpEndpoint` (made with its node)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint: McpEndpoint = scope["app"].state.mcp
        await endpoint(scope, receive, send)


def routes() -> list[BaseRoute]:
    return [Route(MCP_PATH, McpRoute(), methods=["GET", "POST", "DELETE"])]


class McpEndpoint:
    """The ASGI app at ``/mcp``: roomcast's callers and sessions around the SDK."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.sessions = McpSessions(node)
        self.server = self._build_server()
        self.manager = StreamableHTTPSessionManager(
            self.server,
            json_response=True,
            stateless=True,
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            max_request_body_size=MAX_BODY,
        )
        self._runner: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self.stopping = asyncio.Event()  # no new request; waits return
        self._stopped = asyncio.Event()  # the session manager's task group may end
        self._busy = 0  # requests being answered
        self._idle = asyncio.Event()
        self._idle.set()
        self.subscriptions = SubscriptionSet(node)
        self._streams: set[UpdateStream] = set()  # GET streams open here

    async def start(self) -> None:
        """Start the SDK's session manager (its task group), once. The app's lifespan and
        ``roomcast serve`` start it with the node; an app run without either starts it at
        its first request."""
        if self._runner is None:
            started = asyncio.Event()
            self._runner = asyncio.create_task(self._run(started), name="roomcast-mcp")
            await started.wait()
        elif not self._started.is_set():
            await self._started.wait()

    async def _run(self, started: asyncio.Event) -> None:
        async with self.manager.run():
            self._started.set()
            started.set()
            await self._stopped.wait()

    async def stop(self, drain_s: float = DRAIN_S) -> None:
        """Refuse new requests, end waits, let the requests being answered finish (at most
        ``drain_s`` seconds), then stop the session manager (which cancels the rest)."""
        self.stopping.set()
        for stream in self._streams:
            stream.wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), drain_s)
        self.sessions.stop()
        if self._runner is not None:
            self._stopped.set()
            await self._runner

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """The SDK's session manager, for the app's lifetime."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    # ------------------------------------------------------------------ HTTP

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            await self._serve(request, scope, send)
        except RoomcastError as exc:
            status = next((s for t, s in _STATUS.items() if isinstance(exc, t)), 503)
            await error_body(status, f"{exc.code}: {exc.message}")(scope, receive, send)

    async def _serve(self, request: Request, scope: Scope, send: Send) -> None:
        node, method = self.node, request.method
        settings = node.settings
        origin = request.headers.get("origin")
        if not settings.origin_allowed(origin, request.headers.get("host"), scope["scheme"]):
            raise Forbidden(f"origin {origin} is not in allowed_origins")
        given = request.headers.get(SESSION_HEADER)
        session = McpSession.parse(given) if given is not None else None
        if given is not None and (session is None or await self.sessions.is_closed(session)):
            await error_body(404, "Session not found")(scope, request.receive, send)
            return
        if method == "DELETE":
            await self._delete(request, session, scope, send)
            return
        if method == "GET":
            await self._listen(request, session, scope, send)
            return
        body = await _read_body(request)
        identity = mcp_identity(node, request, session.client_id if session else None)
        principal = identity.principal
        if session is None and _is_initialize(body):
            session = McpSession.new(principal.client_id)
        elif session is not None and principal.client_id != session.client_id:
            await error_body(404, "Session not found")(scope, request.receive, send)
            return
        if session is not None:
            self.sessions.touched(session)
        scope[_SCOPE_KEY] = Caller(principal, session)
        await self._answer(scope, _replay(body, request.receive), _with_session(send, session))

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One request through the SDK, counted so that a stop lets it finish."""
        if self.stopping.is_set():
            response = error_body(503, "the server is shutting down: send it again")
            await response(scope, receive, send)
            return
        await self.start()
        self._busy += 1
        self._idle.clear()
        try:
            await self.manager.handle_request(scope, receive, send)
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    async def _delete(
        self, request: Request, session: McpSession | None, scope: Scope, send: Send
    ) -> None:
        if session is None:
            await error_body(400, "Mcp-Session-Id is required")(scope, request.receive, send)
            return
        principal = mcp_identity(self.node, request, session.client_id).principal
        if principal.client_id != session.client_id:
            await error_body(404, "Session not found")(scope, request.receive, send)
            return
        await self.sessions.close(session)
        await Response(status_code=200)(scope, request.receive, send)

    async def _listen(
        self, request: Request, session: McpSession | None, scope: Scope, send: Send
    ) -> None:
        """``GET /mcp``: the session's stream of ``notifications/resources/updated``."""
        receive = request.receive
        if session is None:
            await error_body(400, "Mcp-Session-Id is required")(scope, receive, send)
            return
        if "text/event-stream" not in request.headers.get("accept", ""):
            await error_body(406, "Accept must include text/event-stream")(scope, receive, send)
            return
        principal = mcp_identity(self.node, request, session.client_id).principal
        if principal.client_id != session.client_id:
            await error_body(404, "Session not found")(scope, receive, send)
            return
        if self.stopping.is_set():
            response = error_body(503, "the server is shutting down: connect again")
            await response(scope, receive, send)
            return
        stream = UpdateStream(control_channel(session))
        self._streams.add(stream)
        try:
            await self._stream_updates(stream, session, principal, receive, send)
        finally:
            self._streams.discard(stream)

    async def _stream_updates(
        self,
        stream: UpdateStream,
        session: McpSession,
        principal: Principal,
        receive: Receive,
        send: Send,
    ) -> None:
        node = self.node
        gone = asyncio.Event()

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            stream.wake.set()

        node.fanout.subscribe(stream, stream.control)
        watcher = asyncio.create_task(disconnected())
        try:
            await node.store.bus.subscribe(stream.control)
            for room in await self.subscriptions.rooms(session):
                await stream.watch(node, principal, room)
            headers = [
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache"),
                (b"mcp-session-id", session.session_id.encode()),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b": open\n\n", "more_body": True})
            while not gone.is_set() and not self.stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stream.wake.wait(), KEEPALIVE_S)
                stream.wake.clear()
                moves, stream.moves = stream.moves, []
                for room, subscribed in moves:
                    if subscribed:
                        await stream.watch(node, principal, room)
                    else:
                        stream.unwatch(node, room)
                changed, stream.changed = stream.changed & stream.watched, set()
                body = b"".join(_updated(room) for room in sorted(changed)) or b": keepalive\n\n"
                if not gone.is_set():
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            if not gone.is_set():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            for room in list(stream.watched):
                stream.unwatch(node, room)
            node.fanout.unsubscribe(stream, stream.control)

    async def _subscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        await self._change_subscription(ctx, str(params.uri), subscribed=True)
        return types.EmptyResult()

    async def _unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        await self._change_subscription(ctx, str(params.uri), subscribed=False)
        return types.EmptyResult()

    async def _change_subscription(
        self, ctx: ServerRequestContext[Any, Any], uri: str, *, subscribed: bool
    ) -> None:
        caller = self._caller(ctx)
        room = room_of(uri)
        if caller.session is None:
            raise MCPError(-32600, "resources/subscribe needs a session (Mcp-Session-Id)")
        if subscribed and not caller.principal.capability.allows("subscribe", room):
            raise MCPError(-32600, f"40300: your capability does not allow reading {room}")
        await self.subscriptions.change(caller.session, room, subscribed=subscribed)

    # ------------------------------------------------------------------ MCP

    def _build_server(self) -> Server[Any]:
        return Server(
            "roomcast",
            version=_version(),
            instructions=(
                "Rooms of a roomcast server: read and post messages, wait for new ones, "
                "stream a long answer, see who is here, and use the room's polls, boards "
                "and shared values."
            ),
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_templates,
            on_read_resource=self._read_resource,
            on_subscribe_resource=self._subscribe,
            on_unsubscribe_resource=self._unsubscribe,
        )

    @staticmethod
    def _caller(ctx: ServerRequestContext[Any, Any]) -> Caller:
        request = ctx.request
        caller = request.scope.get(_SCOPE_KEY) if isinstance(request, Request) else None
        if not isinstance(caller, Caller):
            raise MCPError(-32603, "no caller for this request")
        return caller

    async def _list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[
                types.Tool(name=t.name, description=t.description, input_schema=t.input_schema)
                for t in TOOLS.values()
            ]
        )

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        caller = self._caller(ctx)
        spec = TOOLS.get(params.name)
        if spec is None:
            return _tool_error(f"there is no tool {params.name!r}; tools: {', '.join(TOOLS)}")
        session, principal = caller.session, caller.principal

        async def enter(room: str) -> None:
            if session is not None:
                await self.sessions.enter(session, principal, room)

        call = ToolCall(self.node, principal, enter, self.stopping)
        try:
            return _text_result(await spec.run(call, dict(params.arguments or {})))
        except RoomcastError as exc:
            return _tool_error(f"{exc.code}: {exc.message}")
        except Exception:
            log.exception("the MCP tool %s failed", params.name)
            return _tool_error("50000: the tool failed on the server")

    async def _list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        caller = self._caller(ctx)
        rooms = await self.node.list_channels(caller.principal, "", 100)
        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    name=room.channel,
                    uri=RESOURCE_PREFIX + room.channel,
                    description=f"The transcript of {room.channel} (its latest messages).",
                    mime_type="application/json",
                )
                for room in rooms
                if not room.channel.startswith("meta:")
            ]
        )

    async def _list_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(
                    name="room",
                    uri_template=RESOURCE_PREFIX + "{room}",
                    description="A room's transcript (its latest messages).",
                    mime_type="application/json",
                )
            ]
        )

    async def _read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        caller = self._caller(ctx)
        uri = str(params.uri)
        room = room_of(uri)
        try:
            reply = await self.node.history(
                caller.principal, History(channel=room, limit=TRANSCRIPT_MESSAGES)
            )
        except RoomcastError as exc:
            raise MCPError(-32002 if isinstance(exc, NotFound) else -32600, exc.message) from None
        text = json.dumps(
            {"room": room, "messages": [shown(m) for m in reply.messages]}, ensure_ascii=False
        )
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
        )


def with_mcp(
    endpoint: McpEndpoint, inner: Callable[[Any], contextlib.AbstractAsyncContextManager[None]]
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """An app's lifespan ``inner``, with ``endpoint``'s session manager running inside it
    (after the node starts, before it stops)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with inner(app), endpoint.run():
            yield

    return lifespan


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("roomcast")
    except PackageNotFoundError:
        return "0"


def _is_initialize(body: bytes) -> bool:
    try:
        message = json.loads(body)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("method") == "initialize"


async def _read_body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise TooLarge(f"a request to /mcp is at most {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body already read, then waits for the disconnect."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _updated(room: str) -> bytes:
    """An SSE event: ``notifications/resources/updated`` for ``room``'s transcript."""
    note = {
        "jsonrpc": "2.0",
        "method": "notifications/resources/updated",
        "params": {"uri": RESOURCE_PREFIX + room},
    }
    return b"event: message\ndata: " + json.dumps(note).encode() + b"\n\n"


def _with_session(send: Send, session: McpSession | None) -> Send:
    """``send`` that names the session in every response (a new one's id, too)."""
    if session is None:
        return send

    async def send_with_session(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (k, v) for k, v in message.get("headers", []) if k.lower() != b"mcp-session-id"
            ]
            headers.append((b"mcp-session-id", session.session_id.encode()))
            message = {**message, "headers": headers}
        await send(message)

    return send_with_session


__all__ = [
    "CORS_ALLOW_HEADERS",
    "CORS_EXPOSE_HEADERS",
    "MCP_PATH",
    "McpEndpoint",
    "api",
    "routes",
    "with_mcp",
]
