"""A real MCP server for the agent tests, written with the SDK's ``MCPServer``.

Run as a script: ``python mcp_test_servers.py stdio EVENTS`` serves over stdio (the tests
start it as an agent's ``command``), ``python mcp_test_servers.py http EVENTS PORT`` over
Streamable HTTP at ``http://127.0.0.1:PORT/mcp`` (uvicorn). Every line the server appends to
the file ``EVENTS`` is something a test waits for: ``up <pid> <transport>`` once it serves,
``slow started`` and ``slow cancelled`` around a slow call, ``auth <header value>`` for each
call of ``whoami``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError


def record(events: Path, line: str) -> None:
    with events.open("a", encoding="utf-8") as out:
        out.write(line + "\n")


def build(events: Path) -> MCPServer:
    server = MCPServer("roomcast-test-tools")

    @server.tool(description="Say the text back.")
    def echo(text: str) -> str:
        return f"echo: {text}"

    @server.tool(description="Add two numbers (structured result).")
    def add(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    @server.tool(description="Always fails with the given reason.")
    def fail(reason: str) -> str:
        raise ToolError(reason)  # reported to the client as an isError result

    @server.tool(description="Waits, then says so.")
    async def slow(seconds: float) -> str:
        record(events, "slow started")
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            record(events, "slow cancelled")
            raise
        return "slow done"

    @server.tool(name="secret.read", description="A tool an agent's deny list should hide.")
    def secret_read() -> str:
        return "the secret"

    @server.tool(description="The Authorization header this request came with.")
    def whoami(ctx: Context) -> str:
        request = ctx.request_context.request
        value = request.headers.get("authorization", "") if request is not None else ""
        record(events, f"auth {value}")
        return value or "nobody"

    return server


def main() -> None:
    transport, events = sys.argv[1], Path(sys.argv[2])
    server = build(events)
    record(events, f"up {os.getpid()} {transport}")
    if transport == "stdio":
        server.run("stdio")
    else:
        port = int(sys.argv[3])
        anyio.run(lambda: server.run_streamable_http_async(host="127.0.0.1", port=port))


if __name__ == "__main__":
    main()
