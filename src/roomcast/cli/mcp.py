"""``roomcast mcp``: the server's ``/mcp`` tools and resources over stdio, for desktop and
coding agents that start MCP servers as commands.

It is a bridge, not a second implementation: a stdio MCP server (the ``mcp`` SDK's low-level
:class:`~mcp.server.lowlevel.Server`) whose tool and resource requests go, as they are, to a
:class:`~mcp.client.session.ClientSession` connected to ``<server>/mcp`` with the command's
credentials (:class:`Upstream`). The tools are the server's, with its rules and refusals.

What stdio adds is listening. With ``--room``, :class:`RoomWatch` follows those rooms over
the WebSocket (the SDK in :mod:`roomcast.client`) and sends the MCP client a logging
notification (``notifications/message``) for each new message that mentions the client's
name; for a room whose resource the client subscribed to, it sends
``notifications/resources/updated`` when a message arrives or a streamed one ends.

stdout is the protocol: everything else (logs, failures) goes to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar

import typer

from roomcast.cli.root import ClientIdOption, fail, resolve_client_id

if TYPE_CHECKING:
    import mcp_types as types
    from mcp.client.session import ClientSession
    from mcp.server.lowlevel import Server
    from mcp.server.session import ServerSession

    from roomcast.client import Client
    from roomcast.protocol.messages import Event

log = logging.getLogger("roomcast.cli.mcp")

RESOURCE_PREFIX = "roomcast://room/"
CALL_TIMEOUT_S = 60.0  # a wait_for_messages takes up to 25 s
CONNECT_TIMEOUT_S = 10.0
MAX_EARLY = 100  # notifications kept for a client that has not finished initializing
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
T = TypeVar("T")


class UpstreamError(Exception):
    """The server's ``/mcp`` cannot be reached or did not answer (the message says why)."""


class Refused(UpstreamError):
    """The server refused the credentials (HTTP 401 at ``initialize``)."""


def _innermost(exc: BaseException) -> BaseException:
    """``exc``, or the first exception of an exception group, all the way down."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _cause(exc: BaseException) -> str:
    """The innermost reason of ``exc``, in one line."""
    exc = _innermost(exc)
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _open_error(exc: BaseException) -> UpstreamError:
    """Why ``initialize`` failed: the server's refusal, its answer, or the cause."""
    from mcp.shared.exceptions import MCPError

    inner = _innermost(exc)
    if isinstance(inner, MCPError):
        message = inner.error.message
        if message.startswith("40100"):
            return Refused(message)
        if not _is_transport_failure(inner):
            return UpstreamError(f"/mcp answered: {message}")
    return UpstreamError(_cause(inner))


class _Link:
    """One MCP client session to ``/mcp``, held open by a task of its own (the SDK's
    transport is an anyio task group, which must be left by the task that entered it)."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url, self.headers = url, headers
        self.session: ClientSession | None = None
        self.instructions: str | None = None
        self.ended = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> ClientSession:
        ready: asyncio.Future[ClientSession] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._hold(ready), name="roomcast-mcp-upstream")
        return await ready

    async def _hold(self, ready: asyncio.Future[ClientSession]) -> None:
        import anyio
        import httpx2
        from mcp.client.session import ClientSession
        from mcp.client.streamable_http import streamable_http_client

        timeout = httpx2.Timeout(CALL_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        try:
            async with (
                httpx2.AsyncClient(headers=self.headers, timeout=timeout) as http,
                streamable_http_client(self.url, http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                with anyio.fail_after(CONNECT_TIMEOUT_S + 5):
                    result = await session.initialize()
                self.instructions = result.instructions
                self.session = session
                ready.set_result(session)
                await self._stop.wait()
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:
                log.warning("the connection to %s ended: %s", self.url, _cause(exc))
        finally:
            self.ended.set()
            if not ready.done():
                ready.set_exception(UpstreamError("the connection closed"))

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task


def _is_transport_failure(exc: Exception) -> bool:
    """Whether an ``MCPError`` is the SDK's word for a failed connection (closed, timed
    out, an HTTP error without a JSON-RPC body) rather than the server's answer."""
    from mcp.shared.exceptions import MCPError
    from mcp_types import CONNECTION_CLOSED, INTERNAL_ERROR, REQUEST_TIMEOUT

    if not isinstance(exc, MCPError):
        return False
    code, message = exc.error.code, exc.error.message
    return code in (CONNECTION_CLOSED, REQUEST_TIMEOUT) or (
        code == INTERNAL_ERROR and message == "Server returned an error response"
    )


class Upstream:
    """The server's ``/mcp``, as one MCP client session that is opened again after a
    failure: a request that fails raises :class:`UpstreamError` naming the cause, and
    the next request connects anew."""

    def __init__(self, server: str, headers: dict[str, str]) -> None:
        from roomcast.client.urls import http_base

        self.url = http_base(server) + "/mcp"
        self.headers = headers
        self._link: _Link | None = None
        self._lock = asyncio.Lock()

    @property
    def instructions(self) -> str | None:
        return self._link.instructions if self._link else None

    async def connect(self) -> ClientSession:
        """The open session, opening one if there is none (or it ended)."""
        async with self._lock:
            link = self._link
            if link is not None and link.session is not None and not link.ended.is_set():
                return link.session
            if link is not None:
                await link.close()
            self._link = link = _Link(self.url, self.headers)
            try:
                return await link.open()
            except Exception as exc:
                self._link = None
                raise _open_error(exc) from None

    async def request(self, ask: Callable[[ClientSession], Awaitable[T]]) -> T:
        """``ask`` the session; a failure of the connection drops it (the next request
        opens a new one) and raises :class:`UpstreamError`. A JSON-RPC error from the
        server (``MCPError``) is the server's answer and passes through."""
        from mcp.shared.exceptions import MCPError

        session = await self.connect()
        link = self._link
        try:
            return await ask(session)
        except MCPError as exc:
            if not _is_transport_failure(exc):
                raise
            cause = exc.error.message
        except Exception as exc:
            cause = _cause(exc)
        async with self._lock:
            if self._link is link and link is not None:
                await link.close()
                self._link = None
        raise UpstreamError(f"lost the connection to {self.url} ({cause}); it reconnects")

    async def close(self) -> None:
        if self._link is not None:
            await self._link.close()
            self._link = None


class Notifier:
    """Sends notifications to the MCP client once its session is known (the server learns
    it at ``notifications/initialized``); what comes before that waits for it."""

    def __init__(self) -> None:
        self.session: ServerSession | None = None
        self.level = "info"  # the least severe level sent; the client may change it
        self.subscribed: set[str] = set()  # rooms whose resource the client subscribed to
        self._early: list[types.ServerNotification] = []

    async def ready(self, session: ServerSession) -> None:
        """The client's session is initialized: send it what waited."""
        self.session = session
        early, self._early = self._early, []
        for notification in early:
            await self._send(notification)

    async def mentioned(self, room: str, serial: int, author: str | None, text: str) -> None:
        import mcp_types as types

        if LOG_LEVELS.index(self.level) > LOG_LEVELS.index("info"):
            return
        data = {"room": room, "serial": serial, "author": author, "text": text}
        params = types.LoggingMessageNotificationParams(level="info", logger="roomcast", data=data)
        await self._send(types.LoggingMessageNotification(params=params))

    async def updated(self, room: str) -> None:
        import mcp_types as types

        if room not in self.subscribed:
            return
        params = types.ResourceUpdatedNotificationParams(uri=RESOURCE_PREFIX + room)
        await self._send(types.ResourceUpdatedNotification(params=params))

    async def _send(self, notification: types.ServerNotification) -> None:
        if self.session is None:
            if len(self._early) < MAX_EARLY:
                self._early.append(notification)
            return
        try:
            await self.session.send_notification(notification)
        except Exception as exc:  # the client has gone: the end of stdin stops us anyway
            log.debug("a notification was not sent: %s", _cause(exc))


class RoomWatch:
    """Rooms followed over the WebSocket (:mod:`roomcast.client`, which reconnects and
    resumes by itself): a message that mentions the client's name is a logging
    notification if its room was given with ``--room``; a new or finished message in a
    room the client subscribed to is ``notifications/resources/updated``."""

    def __init__(self, client: Client, notifier: Notifier, rooms: list[str]) -> None:
        self.client = client
        self.notifier = notifier
        self.mention_rooms = set(rooms)
        self._watched: set[str] = set()
        self._streams: dict[tuple[str, int], tuple[str | None, str]] = {}

    async def watch(self, room: str) -> None:
        """Follow ``room`` from now on (once)."""
        if room in self._watched:
            return
        channel = self.client.channels.get(room)
        channel.subscribe(self._on_event)
        await channel.attach()
        self._watched.add(room)

    async def _on_event(self, event: Event) -> None:
        room = event.channel
        msg_serial = event.serial if event.type == "create" else event.msg_serial
        if not isinstance(msg_serial, int):
            return
        key = (room, msg_serial)
        text = event.data if isinstance(event.data, str) else ""
        if event.type == "create":
            if event.streaming is True:
                self._streams[key] = (event.client_id, text)
                await self.notifier.updated(room)
                return
            await self._finished(room, msg_serial, event.client_id, text)
        elif event.type == "append" and key in self._streams:
            author, so_far = self._streams[key]
            self._streams[key] = (author, so_far + text)
        elif event.type == "update" and event.status in ("complete", "cancelled", "failed"):
            author, so_far = self._streams.pop(key, (event.client_id, ""))
            await self._finished(room, msg_serial, author, so_far + text)

    async def _finished(self, room: str, serial: int, author: str | None, text: str) -> None:
        from roomcast.protocol.answering import mentions

        await self.notifier.updated(room)
        me = self.client.client_id
        if room in self.mention_rooms and me and author != me and mentions(text, me):
            await self.notifier.mentioned(room, serial, author, text)


class Bridge:
    """The stdio side's handlers: each tool and resource request goes to ``upstream``;
    subscriptions are kept here (``watch`` follows the room over the WebSocket)."""

    def __init__(
        self, upstream: Upstream, notifier: Notifier, watch: Callable[[], Awaitable[RoomWatch]]
    ) -> None:
        self.upstream, self.notifier, self.watch = upstream, notifier, watch

    def server(self) -> Server[Any]:
        """A low-level MCP server with these handlers."""
        import mcp_types as types
        from mcp.server.lowlevel import Server

        from roomcast import __version__

        server: Server[Any] = Server(
            "roomcast",
            version=__version__,
            instructions=self.upstream.instructions,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_resources=self.list_resources,
            on_list_resource_templates=self.list_templates,
            on_read_resource=self.read_resource,
            on_subscribe_resource=self.subscribe,
            on_unsubscribe_resource=self.unsubscribe,
        )
        server.add_notification_handler(
            "notifications/initialized", types.NotificationParams, self.initialized
        )
        server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, self.set_level)
        return server

    async def forward(self, ask: Callable[[ClientSession], Awaitable[T]]) -> T:
        from mcp.shared.exceptions import MCPError

        try:
            return await self.upstream.request(ask)
        except UpstreamError as exc:
            raise MCPError(-32603, f"50300: {exc}") from None

    async def list_tools(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return await self.forward(lambda s: s.list_tools(params=params))

    async def call_tool(
        self, ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        """The server's tool; a connection that fails is a tool error naming the cause."""
        import mcp_types as types

        name, arguments = params.name, dict(params.arguments or {})
        try:
            return await self.upstream.request(
                lambda s: s.call_tool(name, arguments, read_timeout_seconds=CALL_TIMEOUT_S)
            )
        except UpstreamError as exc:
            text = types.TextContent(type="text", text=f"50300: {exc}")
            return types.CallToolResult(content=[text], is_error=True)

    async def list_resources(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return await self.forward(lambda s: s.list_resources(params=params))

    async def list_templates(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return await self.forward(lambda s: s.list_resource_templates(params=params))

    async def read_resource(
        self, ctx: Any, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        return await self.forward(lambda s: s.read_resource(uri))

    async def subscribe(self, ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        """Follow the room: reading its transcript first checks that the caller may."""
        import mcp_types as types
        from mcp.shared.exceptions import MCPError

        uri = str(params.uri)
        room = _room_of(uri)
        await self.forward(lambda s: s.read_resource(uri))
        try:
            await (await self.watch()).watch(room)
        except Exception as exc:
            raise MCPError(-32603, f"cannot follow {room}: {_cause(exc)}") from None
        self.notifier.subscribed.add(room)
        return types.EmptyResult()

    async def unsubscribe(
        self, ctx: Any, params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        import mcp_types as types

        self.notifier.subscribed.discard(_room_of(str(params.uri)))
        return types.EmptyResult()

    async def initialized(self, ctx: Any, params: types.NotificationParams) -> None:
        await self.notifier.ready(ctx.session)

    async def set_level(self, ctx: Any, params: types.SetLevelRequestParams) -> types.EmptyResult:
        import mcp_types as types

        self.notifier.level = params.level
        return types.EmptyResult()


def _room_of(uri: str) -> str:
    import re

    from mcp.shared.exceptions import MCPError

    from roomcast.protocol.messages import CHANNEL_PATTERN

    room = uri.removeprefix(RESOURCE_PREFIX) if uri.startswith(RESOURCE_PREFIX) else ""
    if not re.fullmatch(CHANNEL_PATTERN, room):
        raise MCPError(-32002, f"no such resource: {uri}")
    return room


def credentials(key: str | None, token: str | None, client_id: str | None) -> dict[str, str]:
    """The HTTP headers of ``/mcp`` for the command's credentials."""
    headers = {}
    if key or token:
        headers["Authorization"] = f"Bearer {token or key}"
    if client_id:
        headers["X-Roomcast-Client-Id"] = client_id
    return headers


async def serve_stdio(
    server: str, key: str | None, token: str | None, client_id: str | None, rooms: list[str]
) -> int:
    """Connect to ``server`` (exit with one line if it cannot be), then serve MCP on stdio
    until stdin ends."""
    from mcp.server.stdio import stdio_server

    from roomcast.client import connect

    upstream = Upstream(server, credentials(key, token, client_id))
    notifier = Notifier()
    client: Client | None = None
    watch: RoomWatch | None = None

    async def watcher() -> RoomWatch:
        nonlocal client, watch
        if watch is None:
            client = await connect(server, client_id=client_id, token=token, key=key)
            watch = RoomWatch(client, notifier, rooms)
        return watch

    try:
        await _first_connect(upstream, server)
        for room in rooms:
            await (await watcher()).watch(room)
        bridge = Bridge(upstream, notifier, watcher).server()
        async with stdio_server() as (read, write):
            await bridge.run(read, write, bridge.create_initialization_options())
    finally:
        if client is not None:
            await client.close()
        await upstream.close()
    return 0


async def _first_connect(upstream: Upstream, server: str) -> None:
    try:
        await upstream.connect()
    except Refused as exc:
        await upstream.close()
        fail(f"refused: {exc}", 4)
    except UpstreamError as exc:
        await upstream.close()
        fail(f"cannot reach the server at {server}: {exc}", 2)


def mcp_command(
    server: Annotated[
        str,
        typer.Option(
            "--server",
            envvar="ROOMCAST_SERVER",
            help="The server: http://host:port (env ROOMCAST_SERVER).",
        ),
    ] = "http://127.0.0.1:8000",
    key: Annotated[
        Optional[str],  # noqa: UP045 - typer reads it
        typer.Option(
            "--key", envvar="ROOMCAST_KEY", help="An API key NAME:SECRET (env ROOMCAST_KEY)."
        ),
    ] = None,
    token: Annotated[
        Optional[str],  # noqa: UP045 - typer reads it
        typer.Option(
            "--token", envvar="ROOMCAST_TOKEN", help="A signed token (env ROOMCAST_TOKEN)."
        ),
    ] = None,
    client_id: ClientIdOption = None,
    rooms: Annotated[
        Optional[list[str]],  # noqa: UP045 - typer reads it
        typer.Option(
            "--room",
            help="Follow this room (repeat for more): a message that mentions you (@you or"
            " you) is sent to the MCP client as a notification.",
        ),
    ] = None,
) -> None:
    """Serve the server's MCP tools and resources on stdin/stdout, for desktop and coding
    agents that start MCP servers as commands (docs/mcp.md).

    Exit codes: 2 the server cannot be reached (or a bad --server), 4 the credentials are
    refused. stdout carries only MCP messages; everything else goes to stderr."""
    from roomcast.cli.root import run_client
    from roomcast.client.urls import websocket_url

    try:
        websocket_url(server)
    except ValueError as exc:
        fail(str(exc), 2)
    if key and token:
        fail("give --key or --token, not both", 2)
    if not key and not token:
        client_id = resolve_client_id(client_id)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("mcp").setLevel(logging.CRITICAL)  # its failures are reported as ours
    run_client(serve_stdio(server, key, token, client_id, list(rooms or [])), server)
