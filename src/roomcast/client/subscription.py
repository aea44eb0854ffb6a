"""A subscription to one channel's events: an async iterator, or a callback run in a task.

Each subscription has its own buffer, filled by the client's reader as events arrive, so a
slow consumer delays only itself. The buffer is not bounded: the events are already in this
process, and dropping one would break the exactly-once promise. A consumer that cannot keep
up should detach and read history instead.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any, Protocol

from roomcast.protocol.messages import Event

from .errors import Discontinuity
from .session import ChannelHandle

log = logging.getLogger("roomcast.client")

EventCallback = Callable[[Event], object]
DiscontinuityCallback = Callable[[Discontinuity], object]


class SubscribedChannel(ChannelHandle, Protocol):
    """What a subscription needs from its channel: attach, and forget it when closed."""

    def remove(self, subscription: Subscription) -> None:
        """Forget a closed subscription."""
        ...


class Subscription:
    """Events of one channel, from the moment it was made; see :meth:`Channel.subscribe`.

    Iterating raises :class:`Discontinuity` where a gap could not be filled, after every
    event before it; the subscription stays usable, so iterate it again to continue. It
    stops (``StopAsyncIteration``) when the channel is detached or the client closed, and
    raises the client's error if the client failed (for example :class:`AuthError`).
    """

    def __init__(
        self,
        channel: SubscribedChannel,
        callback: EventCallback | None,
        on_discontinuity: DiscontinuityCallback | None,
    ) -> None:
        self.channel = channel
        self._callback = callback
        self._on_discontinuity = on_discontinuity
        self._items: deque[Event | Discontinuity] = deque()
        self._wake = asyncio.Event()
        self._ended = False
        self._error: BaseException | None = None
        self._attach: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Callback form: attach now and start calling the callback."""
        if self._callback is not None:
            self._attach = asyncio.ensure_future(self._attach_channel())
            self._pump = asyncio.ensure_future(self._run_callback())

    # ------------------------------------------------------------------ fed by the channel

    def push(self, item: Event | Discontinuity) -> None:
        if not self._ended:
            self._items.append(item)
            self._wake.set()

    def finish(self, error: BaseException | None) -> None:
        """No more items: end normally (``error`` None) or with ``error``."""
        if not self._ended:
            self._ended = True
            self._error = error
            self._wake.set()

    @property
    def pending(self) -> int:
        """Events received but not yet taken by the consumer."""
        return len(self._items)

    # ------------------------------------------------------------------ consumer side

    async def _attach_channel(self) -> None:
        if self.channel.state != "attached" and not self._ended:
            await self.channel.attach()

    def _attached(self) -> asyncio.Task[None]:
        if self._attach is None:
            self._attach = asyncio.ensure_future(self._attach_channel())
        return self._attach

    def __await__(self) -> Generator[Any, None, Subscription]:
        return self._wait_attached().__await__()

    async def _wait_attached(self) -> Subscription:
        await asyncio.shield(self._attached())
        return self

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if self._callback is not None:
            raise TypeError("a subscription with a callback is not iterable")
        item = await self._next()
        if isinstance(item, Discontinuity):
            raise item
        return item

    async def _next(self) -> Event | Discontinuity:
        if not self._ended:
            await asyncio.shield(self._attached())
        while True:
            if self._items:
                return self._items.popleft()
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()

    async def _run_callback(self) -> None:
        try:
            await asyncio.shield(self._attached())
        except Exception as exc:
            log.warning("roomcast client: cannot subscribe to %s: %s", self.channel.name, exc)
            return
        while True:
            try:
                item = await self._next()
            except StopAsyncIteration:
                return
            except Exception as exc:
                log.warning("roomcast client: subscription to %s ended: %s", self.channel.name, exc)
                return
            try:
                if isinstance(item, Discontinuity):
                    if self._on_discontinuity is None:
                        log.warning("roomcast client: %s", item)
                        continue
                    result = self._on_discontinuity(item)
                else:
                    assert self._callback is not None
                    result = self._callback(item)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("roomcast client: subscriber callback failed")

    async def aclose(self) -> None:
        """Stop this subscription (the channel stays attached)."""
        self.channel.remove(self)
        self.finish(None)
        for task in (self._pump, self._attach):
            if task is not None and not task.done():
                task.cancel()
        for task in (self._pump, self._attach):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)

    async def __aenter__(self) -> Subscription:
        return await self._wait_attached()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
