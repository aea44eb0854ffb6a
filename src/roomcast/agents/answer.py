"""An agent's answer as it is written: one streamed message, fed by the model's rounds.

The message starts only once there is something to say, so an empty or ``[skip]`` answer
stays silent; a cancel stops the model at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, TypeVar

from roomcast.agents.providers.base import (
    Provider,
    ProviderRequest,
    TextDelta,
    ToolCall,
    ToolResult,
    ToolRound,
    Usage,
)
from roomcast.client import Channel
from roomcast.protocol import messages as m

from .triggers import SKIP

T = TypeVar("T")


class AnswerMessage:
    """The answer message, started only once there is something to say: an empty or
    ``[skip]`` answer stays silent, a failure before any text still shows."""

    def __init__(self, channel: Channel, extras: dict[str, Any]) -> None:
        self.channel = channel
        self.stream = channel.stream(name="text", extras=extras)
        self._held = ""
        self._open = False
        self._separate = False
        self._said = ""  # everything added, sent or held

    async def cancelled(self) -> None:
        """Return once someone cancelled the answer."""
        await self.stream.cancelled.wait()

    def next_round(self) -> None:
        """What the model says after its tool calls starts a new paragraph."""
        self._separate = True

    async def add(self, text: str) -> bool:
        """Append ``text``; True once the message is visible."""
        if self._separate and text:
            self._separate = False
            if self._said and not self._said[-1].isspace():
                text = "\n\n" + text
        self._said += text
        if not self._open:
            self._held += text
            stripped = self._held.lstrip()
            if len(stripped) < len(SKIP) and SKIP.startswith(stripped):
                return False  # might still be "[skip]"
            if stripped.startswith(SKIP):
                return False
            await self._start()
            text, self._held = self._held, ""
        with contextlib.suppress(Exception):  # a cancel shows in `cancelled`
            await self.stream.append(text)
        return True

    async def _start(self) -> None:
        self._open = True
        await self.stream.start()

    async def finish(self, extras: dict[str, Any]) -> None:
        """End the answer ``complete`` (``cancelled`` if someone cancelled it); a silent
        answer was never started and stays so."""
        if not self._open:
            if self._held.strip() and not self._held.strip().startswith(SKIP):
                await self._start()
                await self.stream.append(self._held)
            else:
                return  # silent
        status: m.Status = "cancelled" if self.stream.cancelled.is_set() else "complete"
        await self.stream.end(status, extras=extras)

    async def fail(self, reason: str, extras: dict[str, Any]) -> None:
        """End the answer ``failed`` with ``reason``, starting it if need be."""
        if not self._open:
            await self._start()
        await self.stream.end("failed", extras={**extras, "failure": reason})


async def stream_round(
    provider: Provider,
    request: ProviderRequest,
    answer: AnswerMessage,
    on_visible: Callable[[], None],
) -> tuple[str, list[ToolCall], Usage]:
    """Stream one provider call into ``answer``; stop it at once on a cancel.

    Returns:
        The round's text, the tools it calls, and the tokens it used. ``on_visible`` is
        called once, when the answer first shows.
    """
    calls: list[ToolCall] = []
    usage = Usage(0, 0)
    text = ""
    visible = False

    async def consume() -> None:
        nonlocal usage, text, visible
        async with closing(provider.stream(request)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    text += event.text
                    if await answer.add(event.text) and not visible:
                        visible = True
                        on_visible()
                elif isinstance(event, ToolCall):
                    calls.append(event)
                else:
                    usage = event

    reading = asyncio.ensure_future(consume())
    cancelled = asyncio.ensure_future(answer.cancelled())
    try:
        await asyncio.wait({reading, cancelled}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        cancelled.cancel()
        if not reading.done():
            reading.cancel()  # closes the provider's HTTP stream
            with contextlib.suppress(asyncio.CancelledError):
                await reading
    if reading.done() and not reading.cancelled() and reading.exception() is not None:
        raise reading.exception()  # type: ignore[misc]
    return text, calls, usage


def with_tool_results(
    request: ProviderRequest, text: str, results: list[ToolResult]
) -> ProviderRequest:
    """``request`` followed by the round that called tools and what they returned."""
    return replace(request, messages=(*request.messages, ToolRound(text, tuple(results))))


@contextlib.asynccontextmanager
async def closing(events: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close a provider's stream however the reading ends (its HTTP stream with it)."""
    try:
        yield events
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


__all__ = ["AnswerMessage", "closing", "stream_round", "with_tool_results"]
