"""The addresses the HTTP and WebSocket protocols give a connection: the same as uvicorn's,
read from the transport (TCP over IPv4 and IPv6, and a Unix socket). And an upgraded
connection's HTTP protocol is freed at once."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import pytest
import uvloop
from uvicorn.protocols.utils import get_local_addr, get_remote_addr
from websockets.asyncio.client import connect as ws_connect

from asgi_echo import echo, uvicorn_serving
from roomcast.server.uvicorn_http import RoomcastHttpProtocol, transport_addresses
from roomcast.server.uvicorn_websocket import RoomcastWebSocketProtocol

Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def accepted(
    serve: Callable[[type[asyncio.Protocol]], Awaitable[asyncio.AbstractServer]],
    connect: Connect,
    check: Callable[[asyncio.Transport], None],
) -> None:
    """``check`` the server side's transport of one connection made with ``connect``."""
    made: asyncio.Future[asyncio.Transport] = asyncio.get_running_loop().create_future()

    class Accept(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.set_result(cast(asyncio.Transport, transport))  # uvloop's is not a subclass

    server = await serve(Accept)
    _, writer = await connect()
    try:
        check(await asyncio.wait_for(made, 10))
    finally:
        writer.close()
        made.result().close()
        server.close()


def both_loops(test: Callable[[], Awaitable[None]]) -> None:
    for runner in (asyncio.run, uvloop.run):
        runner(test())


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_tcp_addresses_are_uvicorn_s(host: str) -> None:
    async def check() -> None:
        loop = asyncio.get_running_loop()
        port: list[int] = []

        async def serve(protocol: type[asyncio.Protocol]) -> asyncio.AbstractServer:
            server = await loop.create_server(protocol, host, 0)
            port.append(server.sockets[0].getsockname()[1])
            return server

        def same(transport: asyncio.Transport) -> None:
            expected = (get_local_addr(transport), get_remote_addr(transport))
            assert transport_addresses(transport) == expected
            assert expected[0] == (host, port[0])

        await accepted(serve, lambda: asyncio.open_connection(host, port[0]), same)

    if not socket.has_ipv6 and host == "::1":
        pytest.fail("this machine has no IPv6 loopback")
    both_loops(check)


def test_unix_socket_addresses_are_uvicorn_s(tmp_path: Path) -> None:
    paths = iter([str(tmp_path / "asyncio.sock"), str(tmp_path / "uvloop.sock")])

    async def check() -> None:
        loop = asyncio.get_running_loop()
        path = next(paths)

        async def serve(protocol: type[asyncio.Protocol]) -> asyncio.AbstractServer:
            return await loop.create_unix_server(protocol, path)

        def same(transport: asyncio.Transport) -> None:
            expected = (get_local_addr(transport), get_remote_addr(transport))
            assert transport_addresses(transport) == expected
            assert expected[0] == (path, None)

        await accepted(serve, lambda: asyncio.open_unix_connection(path), same)

    both_loops(check)


async def test_an_upgraded_connection_leaves_no_cycle_of_its_http_protocol() -> None:
    """Once the WebSocket protocol has the connection, the HTTP protocol it came through is
    freed at once, not left (in a cycle with its parser) for a garbage collector pass."""

    async with uvicorn_serving(echo, http=RoomcastHttpProtocol, ws=RoomcastWebSocketProtocol) as (
        port,
        _,
    ):
        gc.collect()
        gc.disable()
        try:
            async with ws_connect(f"ws://127.0.0.1:{port}/") as client:
                await client.send("hello")
                assert await client.recv() == "hello"
                gc.set_debug(gc.DEBUG_SAVEALL)
                gc.collect()
                left = [o for o in gc.garbage if isinstance(o, RoomcastHttpProtocol)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert left == []
