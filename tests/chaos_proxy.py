"""A TCP proxy that resets the connections it carries at random, for the chaos test.

Each connection is forwarded to one of the ``targets`` (picked at random, so a client that
reconnects may land on another node), every chunk waits 0-30 ms in each direction, and
once :meth:`ChaosProxy.unleash` is called each connection lives 0.3-3 s before both of its
sockets are reset: closed with ``SO_LINGER`` 0, which sends an RST and no FIN, as a crashed
middlebox or a lost NAT entry does. :meth:`outage` resets everything and refuses every new
connection for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from dataclasses import dataclass, field

LIFETIME_S = (0.3, 3.0)
CHUNK_DELAY_S = (0.0, 0.03)
_LINGER_0 = struct.pack("ii", 1, 0)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close the socket under ``writer`` with an RST (``SO_LINGER`` 0)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
    writer.transport.abort()


@dataclass(eq=False)
class _Pair:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    deadline: float | None = None  # when it is reset (monotonic), once unleashed
    closed: bool = False

    def reset(self) -> None:
        if not self.closed:
            self.closed = True
            reset(self.upstream)
            reset(self.client)


@dataclass
class ChaosProxy:
    """Listens on 127.0.0.1:``port`` and forwards to the ``targets`` ports."""

    targets: list[int]
    seed: int = 0
    port: int = 0
    resets: int = 0  # connections reset by the proxy (outage refusals included)
    connections: int = 0  # connections accepted
    _random: random.Random = field(init=False)
    _pairs: set[_Pair] = field(default_factory=set)
    _unleashed: bool = False
    _down: bool = False
    _server: asyncio.Server | None = None
    _reaper: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ChaosProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._reaper = asyncio.create_task(self._reap())
        return self

    def unleash(self) -> None:
        """From now on every connection, open or new, is reset after its random lifetime."""
        self._unleashed = True
        for pair in self._pairs:
            pair.deadline = self._deadline()

    def calm(self) -> None:
        """Reset nothing more: the connections open now stay up."""
        self._unleashed = False
        for pair in self._pairs:
            pair.deadline = None

    async def outage(self, seconds: float) -> None:
        """Reset every connection and refuse new ones (accepted, then reset) for ``seconds``."""
        self._down = True
        for pair in list(self._pairs):
            self._reset(pair)
        try:
            await asyncio.sleep(seconds)
        finally:
            self._down = False

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._random.uniform(*LIFETIME_S)

    def _reset(self, pair: _Pair) -> None:
        if not pair.closed:
            self.resets += 1
            pair.reset()
        self._pairs.discard(pair)

    async def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.02)
            now = loop.time()
            for pair in [p for p in self._pairs if p.deadline is not None and p.deadline <= now]:
                self._reset(pair)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._down:
            self.resets += 1
            reset(writer)
            return
        try:
            target = self._random.choice(self.targets)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            reset(writer)
            return
        pair = _Pair(writer, up_writer, self._deadline() if self._unleashed else None)
        self._pairs.add(pair)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._pairs.discard(pair)
            pair.reset()  # one side ended: the other goes too (never a half-open pair)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                await asyncio.sleep(self._random.uniform(*CHUNK_DELAY_S))
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()  # a half-close goes through as one

    async def aclose(self) -> None:
        for pair in list(self._pairs):
            pair.reset()
        self._pairs.clear()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
