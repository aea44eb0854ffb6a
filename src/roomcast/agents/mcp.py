"""MCP servers' tools for an agent (docs/agents.md, "MCP tools").

An agent whose ``tools`` name ``mcp:NAME`` gets the tools of the ``[[mcp_servers]]`` entry
``NAME``. Each agent keeps one :class:`McpServerConnection` per server: a task that connects
with the ``mcp`` SDK's client (``stdio_client`` for a ``command``, ``streamable_http_client``
for a ``url``), lists the tools, and then pings the server while it is quiet. A server that
cannot be reached or goes away is logged once by name, its tools are withdrawn (the model is
not offered them), and the task connects again with backoff; its tools come back with it.

A tool ``T`` of server ``NAME`` reaches the model as ``NAME__T`` (characters outside
``[A-Za-z0-9_-]`` become ``_``, at most 64 in all): the form every provider accepts.
A call goes through the server's session; cancelling the task that awaits it (a cancel of
the answer) makes the SDK send MCP's ``notifications/cancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx2
from mcp import types
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from roomcast.agents.config import AgentConfigError, McpServerConfig
from roomcast.agents.providers.base import ToolSpec
from roomcast.aio import cancel_and_wait

from .tools import Tool, ToolError

log = logging.getLogger("roomcast.agents")

SEPARATOR = "__"
MAX_NAME = 64
BACKOFF_FIRST_S = 0.25
BACKOFF_MAX_S = 10.0
CONNECT_TIMEOUT_S = 15.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_CLIENT = types.Implementation(name="roomcast-agent", version="1")


def exposed_name(server: str, tool: str) -> str:
    """The name the model calls tool ``tool`` of server ``server`` by."""
    return _UNSAFE.sub("_", f"{server}{SEPARATOR}{tool}")[:MAX_NAME]


def offered(config: McpServerConfig, tool: str) -> bool:
    """Whether ``tool_allow`` lets ``tool`` through and ``tools_deny`` does not stop it."""
    allowed = any(fnmatch.fnmatchcase(tool, pattern) for pattern in config.tools_allow)
    return allowed and not any(fnmatch.fnmatchcase(tool, p) for p in config.tools_deny)


def result_text(result: types.CallToolResult) -> str:
    """What the model reads of a call's result: its text parts, else its structured content
    as JSON; other content is named by its kind."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        elif isinstance(block, types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, types.TextResourceContents):
                parts.append(resource.text)
            else:
                parts.append(f"[resource {resource.uri}]")
        elif isinstance(block, types.ResourceLink):
            parts.append(f"[resource {block.uri}]")
        else:
            parts.append(f"[{block.type} {getattr(block, 'mime_type', '')}]".replace(" ]", "]"))
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(parts)


def headers_of(config: McpServerConfig, environ: Mapping[str, str], agent: str) -> dict[str, str]:
    """The HTTP headers of ``config``, read from ``environ``.

    Raises:
        AgentConfigError: a variable is not set; it names the agent, the server, the header
            and the variable.
    """
    headers: dict[str, str] = {}
    for header, variable in config.headers_env:
        value = environ.get(variable)
        if not value:
            raise AgentConfigError(
                f"{agent}: tools: mcp:{config.name}: {config.place}: headers_env: {header}: "
                f"the environment variable {variable} is not set"
            )
        headers[header] = value
    return headers


class McpServerConnection:
    """One MCP server, kept connected for one agent.

    Args:
        config: The server's ``[[mcp_servers]]`` entry.
        headers: Its HTTP headers (already read from the environment).
        agent: The agent's name, for the log.
    """

    def __init__(self, config: McpServerConfig, headers: Mapping[str, str], agent: str) -> None:
        self.config = config
        self.headers = dict(headers)
        self.agent = agent
        self.tools: dict[str, Tool] = {}  # by exposed name; empty while disconnected
        self.connected = asyncio.Event()
        self.tried = asyncio.Event()  # the first attempt to connect has ended, either way
        self._session: ClientSession | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Connect in the background (and again whenever the connection is lost)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def aclose(self) -> None:
        """Disconnect (a stdio server's process is stopped) and connect no more."""
        task, self._task = self._task, None
        if task is not None:
            # Cancelled again while it runs on: a cancel that lands while the MCP client's
            # task group or HTTP connect is winding down can be swallowed, and a plain
            # `await task` then waits for ever (roomcast/aio.py).
            await cancel_and_wait(task)

    async def call(self, tool: str, arguments: dict[str, Any]) -> str:
        """Call ``tool`` (the server's own name for it).

        Raises:
            ToolError: the server is not connected, the call failed or timed out, or the
                tool reported an error (``isError``); the message is what the model reads.
        """
        session = self._session
        if session is None:
            raise ToolError(f"MCP server {self.config.name!r} is not connected")
        try:
            result = await session.call_tool(
                tool, arguments, read_timeout_seconds=self.config.timeout_s
            )
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                self._lost.set()
            raise ToolError(f"{self.config.name}: {tool}: {exc.message}") from None
        except (OSError, httpx2.HTTPError) as exc:
            self._lost.set()
            raise ToolError(f"{self.config.name}: {tool}: {exc}") from None
        except Exception as exc:  # an answer the SDK refuses: the model reads why
            raise ToolError(f"{self.config.name}: {tool}: {_reason(exc)}") from None
        if not isinstance(result, types.CallToolResult):
            raise ToolError(f"{self.config.name}: {tool}: the server's answer is not a result")
        text = result_text(result)
        if result.is_error:
            raise ToolError(text or f"{self.config.name}: {tool} failed")
        return text

    # ------------------------------------------------------------------ the connection

    async def _run(self) -> None:
        delay, reported = BACKOFF_FIRST_S, False
        while True:
            try:
                async with self._session_open() as session:
                    await self._offer(session)
                    if reported:
                        log.info("agent %s: MCP server %s is back", self.agent, self.config.name)
                    delay, reported = BACKOFF_FIRST_S, False
                    await self._watch(session)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = _reason(exc)
            finally:
                self._withdraw()
                self.tried.set()
            if not reported:
                log.warning(
                    "agent %s: MCP server %s is unavailable (%s); its tools are withdrawn "
                    "until it is back",
                    self.agent,
                    self.config.name,
                    reason,
                )
                reported = True
            else:
                log.debug("agent %s: MCP server %s: %s", self.agent, self.config.name, reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    @contextlib.asynccontextmanager
    async def _session_open(self) -> AsyncIterator[ClientSession]:
        config = self.config
        async with contextlib.AsyncExitStack() as stack:
            if config.command is not None:
                params = StdioServerParameters(
                    command=config.command, args=list(config.args), env=dict(config.env)
                )
                streams = await stack.enter_async_context(stdio_client(params, errlog=sys.stderr))
            else:
                assert config.url is not None
                http = await stack.enter_async_context(
                    httpx2.AsyncClient(headers=self.headers, timeout=config.timeout_s + 5)
                )
                streams = await stack.enter_async_context(
                    streamable_http_client(config.url, http_client=http)
                )
            session = await stack.enter_async_context(
                ClientSession(streams[0], streams[1], client_info=_CLIENT)
            )
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await session.initialize()
            yield session

    async def _offer(self, session: ClientSession) -> None:
        """List the server's tools and offer those the allow and deny lists let through."""
        found: list[types.Tool] = []
        cursor: str | None = None
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            while True:
                params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
                listing = await session.list_tools(params=params)
                found += listing.tools
                cursor = listing.next_cursor
                if not cursor:
                    break
        tools: dict[str, Tool] = {}
        for spec in found:
            if not offered(self.config, spec.name):
                continue
            name = exposed_name(self.config.name, spec.name)
            if name in tools:
                log.warning(
                    "agent %s: MCP server %s: tool %r is left out: its name %s is taken",
                    self.agent,
                    self.config.name,
                    spec.name,
                    name,
                )
                continue
            tools[name] = self._tool(name, spec)
        self._lost.clear()
        self._session = session
        self.tools = tools
        self.connected.set()
        self.tried.set()
        log.info(
            "agent %s: MCP server %s is connected (%d tools offered)",
            self.agent,
            self.config.name,
            len(tools),
        )

    def _tool(self, name: str, spec: types.Tool) -> Tool:
        schema = dict(spec.input_schema) if spec.input_schema else {}
        schema.setdefault("type", "object")
        schema.setdefault("properties", {})
        description = spec.description or spec.title or spec.name
        original = spec.name

        async def run(_channel: Any, arguments: dict[str, Any]) -> str:
            return await self.call(original, arguments)

        return Tool(ToolSpec(name, description, schema), run)

    async def _watch(self, session: ClientSession) -> None:
        """Return (raise) once the connection is lost: a failed ping, or a call that found
        it closed."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.ping_interval_s):
                    await self._lost.wait()
            if self._lost.is_set():
                raise ConnectionError("the connection was lost")
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await session.send_ping()

    def _withdraw(self) -> None:
        self._session = None
        self.tools = {}
        self.connected.clear()


def _reason(exc: BaseException) -> str:
    """A short reason for the log, from what may be an exception group of the SDK's tasks."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, MCPError):
        return exc.message
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if str(exc) else text


class McpToolbox:
    """The MCP servers of one agent: their tools, as they are now, by exposed name."""

    def __init__(
        self,
        servers: tuple[McpServerConfig, ...],
        environ: Mapping[str, str],
        agent: str,
        place: str = "",
    ) -> None:
        """``agent`` is the agent's name (for the log), ``place`` where it was configured
        (to start errors); a header's variable that is not set raises AgentConfigError."""
        self.connections = [
            McpServerConnection(server, headers_of(server, environ, place or agent), agent)
            for server in servers
        ]

    async def start(self) -> None:
        """Connect to every server; return once each has connected or failed once (a
        server that failed is tried again in the background)."""
        for connection in self.connections:
            connection.start()
        if self.connections:
            await asyncio.wait(
                [asyncio.ensure_future(c.tried.wait()) for c in self.connections],
                timeout=CONNECT_TIMEOUT_S + 5,
            )

    async def aclose(self) -> None:
        await asyncio.gather(*(connection.aclose() for connection in self.connections))

    def tools(self) -> dict[str, Tool]:
        """The tools offered now (those of the servers that are connected)."""
        found: dict[str, Tool] = {}
        for connection in self.connections:
            found.update(connection.tools)
        return found


__all__ = [
    "McpServerConnection",
    "McpToolbox",
    "exposed_name",
    "headers_of",
    "offered",
    "result_text",
]
