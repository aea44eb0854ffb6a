"""Load shedding (docs/protocol.md §8: HTTP 503, close 1013): under overload the server refuses
new work with a clear "retry later" instead of queueing it until memory runs out.

This process is overloaded while either bound is reached:

- ``max_connections``: the WebSocket connections and SSE streams it holds, and the
  half-open connections (accepted, request headers not yet complete: at most
  ``header_timeout_s`` each, see ``uvicorn_http``). One more
  WebSocket is refused at the upgrade with HTTP 503, ``Retry-After`` and the §7 error body
  (code 50300), so a load balancer can send it to another node. Under an ASGI server
  without the denial-response extension it gets ``error`` 50300 and the close 1013 right
  after the upgrade instead.
- ``max_pending_writes``: the writes handed to the store and not yet committed (the SQLite
  writer's queue, or the requests in flight to Redis). One more write is refused with
  50300 at once: a WebSocket request gets an ``error`` reply and its connection stays
  usable, an HTTP write gets 503.

While overloaded, every ``/v1`` HTTP route answers 503 with ``Retry-After`` and the §7 error
body (code 50300); ``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json`` still answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence, Sized

from roomcast.backends.base import Appended, Store
from roomcast.backends.measured import MeasuredStore, StoreObserver
from roomcast.protocol.errors import Unavailable
from roomcast.protocol.messages import Event
from roomcast.settings import Settings

# What `Retry-After` says, in seconds: a write backlog drains within moments; connections
# free up more slowly.
RETRY_WRITES_S = 1
RETRY_CONNECTIONS_S = 5

log = logging.getLogger("roomcast.server")

OVERLOADED = "server overloaded, retry later"
WARN_EVERY_S = 10.0


class Overload:
    """The two bounds of one server process, and how close it is to them."""

    def __init__(self, settings: Settings, streams: Sized | None = None) -> None:
        self.max_connections = settings.max_connections
        self.max_pending_writes = settings.max_pending_writes
        self.websockets = 0  # open WebSocket connections, counted from the upgrade
        self.half_open = 0  # TCP connections whose request headers are not complete yet
        self.pending_writes = 0  # store writes submitted and not yet answered
        self._streams = streams  # the open SSE streams (anything with a len)
        self._warned_at = -WARN_EVERY_S

    @property
    def connections(self) -> int:
        """WebSocket connections, SSE streams and half-open connections held now."""
        streams = len(self._streams) if self._streams is not None else 0
        return self.websockets + streams + self.half_open

    @property
    def full(self) -> bool:
        """No room for one more connection."""
        return self.connections >= self.max_connections

    def reason(self) -> tuple[str, int] | None:
        """Why this process is overloaded and the seconds to retry after; None if it is not."""
        if self.pending_writes >= self.max_pending_writes:
            return (
                f"{OVERLOADED}: {self.pending_writes} writes are waiting for the store",
                RETRY_WRITES_S,
            )
        if self.full:
            return f"{OVERLOADED}: {self.connections} connections open", RETRY_CONNECTIONS_S
        return None

    def should_warn(self) -> bool:
        """True at most once per ``WARN_EVERY_S``: shedding is logged without flooding the log."""
        now = time.monotonic()
        if now - self._warned_at < WARN_EVERY_S:
            return False
        self._warned_at = now
        return True

    def take_writes(self, count: int) -> None:
        """Count ``count`` writes in, or refuse them (50300) when the backlog is at its bound."""
        if self.pending_writes + count > self.max_pending_writes and self.pending_writes > 0:
            if self.should_warn():
                log.warning("shedding writes: %d are waiting for the store", self.pending_writes)
            raise Unavailable(f"{OVERLOADED}: the store has {self.pending_writes} writes queued")
        self.pending_writes += count

    def release_writes(self, count: int) -> None:
        self.pending_writes -= count


class SheddingStore(MeasuredStore):
    """The measured store, with writes counted against ``max_pending_writes``: a write over
    the bound fails at once with 50300 instead of joining the queue."""

    def __init__(self, inner: Store, observer: StoreObserver, overload: Overload) -> None:
        super().__init__(inner, observer)
        self.overload = overload

    async def append(self, event: Event, *, idempotency_key: str | None = None) -> Appended:
        self.overload.take_writes(1)
        try:
            return await super().append(event, idempotency_key=idempotency_key)
        finally:
            self.overload.release_writes(1)

    def submit(self, event: Event, *, idempotency_key: str | None = None) -> Awaitable[Appended]:
        overload = self.overload
        try:
            overload.take_writes(1)
        except Unavailable as exc:
            # A failed future rather than a raise: callers await the result of a submit.
            refused: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
            refused.set_exception(exc)
            return refused
        try:
            future = asyncio.ensure_future(super().submit(event, idempotency_key=idempotency_key))
        except BaseException:
            overload.release_writes(1)
            raise
        future.add_done_callback(lambda _: overload.release_writes(1))
        return future

    async def append_batch(
        self, events: Sequence[Event], keys: Sequence[str | None]
    ) -> list[Appended]:
        count = len(events)
        self.overload.take_writes(count)
        try:
            return await super().append_batch(events, keys)
        finally:
            self.overload.release_writes(count)


__all__ = ["OVERLOADED", "RETRY_CONNECTIONS_S", "RETRY_WRITES_S", "Overload", "SheddingStore"]
