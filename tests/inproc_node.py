"""A node in this process over a MemoryStore, and transports that record what they send.

For in-process tests of the core: no server, no sockets, fast enough to run in a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec

from roomcast.backends import open_backend
from roomcast.core.authz import Capability, Principal
from roomcast.core.connection import Connection
from roomcast.core.node import Node
from roomcast.protocol.codec import codec_for
from roomcast.settings import Settings


class RecordingTransport:
    """Takes frames at once until ``backed_up``; then ``send`` waits for ``release``."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.backed_up = False
        self.release = asyncio.Event()

    def send_now(self, frame: bytes) -> bool:
        if self.backed_up:
            return False
        self.frames.append(frame)
        return True

    async def send(self, frame: bytes) -> None:
        await self.release.wait()
        self.frames.append(frame)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def messages(self) -> list[dict[str, Any]]:
        """Every message sent, batches unpacked, in order."""
        codec = codec_for("json")
        return [
            msgspec.to_builtins(message)
            for frame in self.frames
            for message in codec.decode_reply(frame)
        ]


@asynccontextmanager
async def running_node(**overrides: Any) -> AsyncIterator[Node]:
    """A started node on ``memory://`` with ``overrides`` of its settings."""
    settings = Settings(store="memory://", allow_anonymous=True, **overrides)
    node = Node(open_backend("memory://"), settings)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def connect(node: Node, client_id: str, transport: RecordingTransport) -> Connection:
    """A connection of ``client_id`` with every capability, registered and started."""
    principal = Principal(client_id, Capability.parse('{"*": ["*"]}'), "key")
    connection_id, presence, resumed = await node.connect(principal, None)
    conn = Connection(node, transport, codec_for("json"), principal, connection_id, presence)
    await node.register(conn)
    conn.start(resumed)
    return conn


async def settle(turns: int = 20) -> None:
    """Let the event loop run the scheduled flushes and replies."""
    for _ in range(turns):
        await asyncio.sleep(0)
