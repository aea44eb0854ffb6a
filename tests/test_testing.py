"""``roomcast.testing`` helpers that are not processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import websockets.asyncio.server
from websockets.asyncio.server import ServerConnection

from roomcast import testing


class OfferedPorts:
    """Stands in for the system's socket in ``free_port``: each bind to port 0 gets the
    next of ``ports``, as a system that offers the same free port twice would."""

    def __init__(self, ports: Iterator[int]) -> None:
        self.ports = ports
        self.port = 0

    def __call__(self) -> OfferedPorts:
        return self

    def __enter__(self) -> OfferedPorts:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def bind(self, address: Any) -> None:
        self.port = next(self.ports)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_free_port_never_gives_the_same_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = testing.free_port()  # a real one, now given
    offered = OfferedPorts(iter([taken, 1, 1, taken, 2]))  # 1, 2: never offered for real
    monkeypatch.setattr(testing.socket, "socket", offered)
    assert [testing.free_port(), testing.free_port()] == [1, 2]


async def test_a_wire_client_whose_connection_ended_says_so_at_once() -> None:
    """Waiting on an ended connection fails at once with its close code, after what came
    before the end; not when the wait's timeout runs out."""

    async def serve(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"action": "connected"}))
        events = [{"action": "event", "serial": 1}, {"action": "event", "serial": 2}]
        await ws.send(json.dumps(events))
        await ws.close(1012, "attach again")

    async with websockets.asyncio.server.serve(serve, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = await testing.WireClient.connect(f"ws://127.0.0.1:{port}")
        async with asyncio.timeout(5):
            first = await client.next()
            assert first["serial"] == 1
            await client.closed.wait()
            assert await client.quiet(0) == [{"action": "event", "serial": 2}]
            for _ in range(2):
                with pytest.raises(ConnectionError, match="close code 1012"):
                    await client.next(lambda m: m["action"] == "ok", timeout=60)
