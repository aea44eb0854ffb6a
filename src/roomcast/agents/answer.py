"""An agent's answer as it is written: one streamed message, fed by the model's rounds,
with the tool lines shown where the calls happened.

The message starts only once there is something to say, so an empty or ``[skip]`` answer
stays silent; a cancel stops the model at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from roomcast.agents.providers.base import (
    Provider,
    ProviderRequest,
    StateChange,
    TextDelta,
    ToolCall,
    ToolResult,
    ToolRound,
    Usage,
)
from roomcast.client import Channel, MessageStream
from roomcast.protocol import messages as m

from .tools import Tool, ToolError, apply_patch, call_tool, change_state
from .triggers import SKIP

T = TypeVar("T")
log = logging.getLogger("roomcast.agents")


class AnswerMessage:
    """The answer message, started only once there is something to say: an empty or
    ``[skip]`` answer stays silent, a failure before any text still shows."""

    def __init__(
        self,
        channel: Channel,
        extras: dict[str, Any],
        on_start: Callable[[MessageStream], None] = lambda stream: None,
    ) -> None:
        self.channel = channel
        self.stream = channel.stream(name="text", extras=extras)
        self._on_start = on_start
        self._held = ""
        self._open = False
        self._separate = False
        self._said = ""  # everything added, sent or held

    def position(self) -> dict[str, int]:
        """Where the answer stands, for a tool message made now: ``answer`` (its msg_serial)
        and ``at`` (the length of its text in code points, where the tool line belongs);
        nothing while the answer has not started. The text held for the rollup window is
        sent first, so that live, too, the tool message comes after it."""
        if not self._open or self.stream.msg_serial is None:
            return {}
        self.stream.send_now()
        return {"answer": self.stream.msg_serial, "at": len(self._said)}

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
            held, self._held = self._held, ""
            await self._start(held)  # the message starts with what was held
            return True
        with contextlib.suppress(Exception):  # a cancel shows in `cancelled`
            await self.stream.append(text)
        return True

    async def _start(self, text: str = "") -> None:
        self._open = True
        await self.stream.start(text)
        self._on_start(self.stream)

    async def finish(self, extras: dict[str, Any]) -> None:
        """End the answer ``complete`` (``cancelled`` if someone cancelled it); a silent
        answer was never started and stays so."""
        if not self._open:
            if self._held.strip() and not self._held.strip().startswith(SKIP):
                held, self._held = self._held, ""
                await self._start(held)
            else:
                return  # silent
        status: m.Status = "cancelled" if self.stream.cancelled.is_set() else "complete"
        await self.stream.end(status, extras=extras)

    async def fail(self, reason: str, extras: dict[str, Any]) -> None:
        """End the answer ``failed`` with ``reason``, starting it if need be."""
        if not self._open:
            await self._start()
        await self.stream.end("failed", extras={**extras, "failure": reason})


@dataclass
class Round:
    """What one provider call gave.

    Attributes:
        text: What the model said.
        calls: The tool calls it leaves to roomcast.
        ran: The tool calls the agent ran itself, with their results (already shown).
        usage: The tokens it used.
    """

    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    ran: list[ToolResult] = field(default_factory=list)
    usage: Usage = field(default_factory=lambda: Usage(0, 0))


AgentDid = Callable[[ToolResult | StateChange], Awaitable[None]]
"""Shows what the agent did itself (a tool it ran, a change of the shared state)."""


async def stream_round(
    provider: Provider,
    request: ProviderRequest,
    answer: AnswerMessage,
    on_visible: Callable[[], None],
    on_done: AgentDid | None = None,
) -> Round:
    """Stream one provider call into ``answer``; stop it at once on a cancel.

    ``on_visible`` is called once, when the answer first shows; ``on_done`` with each tool
    result and state change of the agent's own, where it comes in the stream.
    """
    found = Round()
    visible = False

    async def consume() -> None:
        nonlocal visible
        async with closing(provider.stream(request)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    found.text += event.text
                    if await answer.add(event.text) and not visible:
                        visible = True
                        on_visible()
                elif isinstance(event, ToolCall):
                    found.calls.append(event)
                elif isinstance(event, ToolResult | StateChange):
                    if isinstance(event, ToolResult):
                        found.ran.append(event)
                    if on_done is not None:
                        await on_done(event)
                else:
                    found.usage = event

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
    return found


async def unless_cancelled(answer: AnswerMessage, work: Awaitable[T]) -> T | None:
    """Await ``work``; if someone cancels the answer first, cancel it (an MCP call then
    sends its cancellation to the server) and return None."""
    task = asyncio.ensure_future(work)
    cancelled = asyncio.ensure_future(answer.cancelled())
    try:
        await asyncio.wait({task, cancelled}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        cancelled.cancel()
        stopped = not task.done()
        if stopped:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if stopped else task.result()


async def run_tool(
    agent: str,
    tools: dict[str, Tool],
    channel: Channel,
    call: ToolCall,
    extras: dict[str, Any],
    answer: AnswerMessage,
) -> ToolResult:
    """Run a tool call and show it in the room as a ``tool`` message, whose extras
    are ``reply_to`` and ``agent`` and, once the answer has started, its ``answer`` and
    the point ``at`` which the call was made. A cancel of the answer cancels the call."""
    try:
        output = await unless_cancelled(
            answer, call_tool(tools, channel, call.name, call.arguments)
        )
        if output is None:
            result = ToolResult(call, "cancelled: the answer was stopped", is_error=True)
        else:
            result = ToolResult(call, output)
    except ToolError as exc:
        result = ToolResult(call, str(exc), is_error=True)
    outcome = "error" if result.is_error else "ok"
    log.info("agent %s called %s on %s: %s", agent, call.name, channel.name, outcome)
    await show_tool(channel, result, extras)
    return result


async def show_tool(channel: Channel, result: ToolResult, extras: dict[str, Any]) -> None:
    """Show a tool call in the room: a ``tool`` message ``{tool, arguments, result, error}``
    with the answer's extras (and, once the answer has started, where in it the call was)."""
    await channel.publish(
        {
            "tool": result.call.name,
            "arguments": result.call.arguments,
            "result": result.output,
            "error": result.is_error,
        },
        name="tool",
        extras=extras,
    )


def agent_did(
    agent: str,
    channel: Channel,
    given: dict[str, Any] | None,
    answer: AnswerMessage,
    extras: dict[str, Any],
) -> AgentDid:
    """How ``stream_round`` shows what agent ``agent`` did itself: a tool it ran becomes a
    tool line where the answer stands; a change of the shared state goes to the room's live
    objects, or, if it is refused, into the log (the answer goes on).

    A snapshot is read against the state as the agent knows it: ``given`` (the state the
    request carried) with the agent's earlier changes of this round, so that a second
    snapshot does not make the first one's changes again."""
    known = dict(given) if given is not None else None

    async def did(done: ToolResult | StateChange) -> None:
        nonlocal known
        if isinstance(done, ToolResult):
            log.info("agent %s ran its own %s on %s", agent, done.call.name, channel.name)
            await show_tool(channel, done, {**extras, **answer.position()})
            return
        try:
            ops = await change_state(channel, done, known)
        except ToolError as exc:
            log.warning("agent %s: its state change on %s is refused: %s", agent, channel.name, exc)
            return
        finally:
            known = _as_known(known, done)
        log.info("agent %s changed the state of %s (%d operations)", agent, channel.name, len(ops))

    return did


def _as_known(known: dict[str, Any] | None, change: StateChange) -> dict[str, Any] | None:
    """The state as the agent knows it after ``change`` (made or refused: it believes it)."""
    if change.patch is not None:
        with contextlib.suppress(ToolError):
            patched = apply_patch(known or {}, change.patch)
            return patched if isinstance(patched, dict) else known
        return known
    if isinstance(change.snapshot, dict):
        return {**(known or {}), **change.snapshot}
    return known


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


__all__ = [
    "AgentDid",
    "AnswerMessage",
    "Round",
    "agent_did",
    "closing",
    "run_tool",
    "show_tool",
    "stream_round",
    "unless_cancelled",
    "with_tool_results",
]
