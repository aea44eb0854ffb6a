"""The agent runtime: agents as participants of rooms, through the SDK (DESIGN.md §Agents).

Each agent is one SDK connection with its own ``client_id``. It finds its rooms (the
channel list and ``meta:channels``), attaches to each from a serial (so nothing posted
meanwhile is missed), shows its presence, and for each finished message decides whether to
answer. Before doing anything for a trigger it ``claim``s it, so that exactly one worker
answers, wherever the workers run (in ``roomcast serve`` or in ``roomcast agents``
processes). The answer is one streamed message that replies to the trigger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from roomcast.agents.config import AgentConfig
from roomcast.agents.providers import make_provider
from roomcast.agents.providers.base import (
    Provider,
    ProviderError,
    ProviderRequest,
    TextDelta,
    ToolCall,
    ToolResult,
    ToolRound,
    Turn,
    Usage,
    cost_usd,
)
from roomcast.client import Channel, Client, Event, LiveMap, Message, MessageStream, connect
from roomcast.client.rest import list_channels
from roomcast.core.authz import pattern_matches
from roomcast.protocol import messages as m
from roomcast.protocol.objects import AGENTS_KEY
from roomcast.protocol.rollup import message_from_create

from .context import build_request, objects_summary, reply_chain, shared_values
from .tools import RESERVED_KEYS, Tool, ToolError, call_tool, resolve_tools
from .triggers import (
    SKIP,
    RateWindow,
    agent_info,
    consider,
    depth_of,
    message_text,
    parse_judgement,
)

log = logging.getLogger("roomcast.agents")
T = TypeVar("T")

META_CHANNELS = "meta:channels"
CLAIM_TTL_S = 600.0
STARTUP_LOOKBACK = 200  # events re-read per room at start, for triggers posted just before
TRIGGER_MAX_AGE_S = 120.0  # older triggers found on start are not answered any more
MAX_TOOL_ROUNDS = 5
LIVE_TRIGGER_MS = 5000  # a trigger younger than this was seen live, not found on start
SHUTDOWN_REASON = "server shutting down"


@dataclass(slots=True)
class _Room:
    """One room as one agent sees it."""

    channel: Channel
    queue: asyncio.Lock = field(default_factory=asyncio.Lock)
    agent_answers: RateWindow = field(default_factory=lambda: RateWindow(60))
    running: dict[int, MessageStream | None] = field(default_factory=dict)  # trigger → answer


class AgentWorker:
    """One agent: its connection, its rooms, its answers."""

    def __init__(
        self,
        config: AgentConfig,
        server: str,
        *,
        key: str | None,
        agent_names: frozenset[str],
        environ: Mapping[str, str],
        provider: Provider | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.server = server
        self.key = key
        self.agent_names = agent_names
        self.provider = provider or make_provider(config, environ)
        self.tools: dict[str, Tool] = resolve_tools(config.tools)
        self.client: Client | None = None
        self.rooms: dict[str, _Room] = {}
        self.stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._answers: set[asyncio.Task[Any]] = set()
        self._spend: dict[tuple[str, str], tuple[int, float]] = {}  # (room, day) → usage
        self._started_at = time.time()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.client = await connect(self.server, client_id=self.name, key=self.key)
        meta = self.client.channels.get(META_CHANNELS)
        await meta.subscribe(self._on_meta_event)
        for pattern in self.config.rooms:
            prefix = pattern[:-1] if pattern.endswith("*") else pattern
            for summary in await list_channels(
                self.server, prefix=prefix, limit=1000, key=self.key
            ):
                if pattern_matches(pattern, summary.channel):
                    from_serial = max(0, summary.serial - STARTUP_LOOKBACK)
                    await self.watch(summary.channel, from_serial)
        log.info(
            "agent %s is up (%s %s, %s)",
            self.name,
            self.config.provider,
            self.config.model,
            self.config.policy,
        )

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Stop taking triggers, let running answers finish for ``grace_s``, then end what
        is still streaming as ``failed`` ("server shutting down")."""
        self.stopping = True
        if self._answers:
            _, pending = await asyncio.wait(self._answers, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for task in self._tasks:
            task.cancel()
        if self.client is not None:
            await self.client.close()
        await self.provider.aclose()

    def _spawn(self, coro: Any, *, answer: bool = False) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        group = self._answers if answer else self._tasks
        group.add(task)
        task.add_done_callback(group.discard)
        task.add_done_callback(_log_failure)
        return task

    # ------------------------------------------------------------------ rooms

    def _on_meta_event(self, event: Event) -> None:
        if event.type != "create" or event.name != "channel.created":
            return
        channel = event.data.get("channel") if isinstance(event.data, dict) else None
        if isinstance(channel, str) and channel not in self.rooms and self._may_serve(channel):
            self._spawn(self.watch(channel, 0))

    def _may_serve(self, channel: str) -> bool:
        return any(pattern_matches(p, channel) for p in self.config.rooms)

    async def watch(self, name: str, from_serial: int) -> None:
        """Attach ``name`` from ``from_serial`` and answer what calls for it."""
        if name in self.rooms or self.client is None or self.stopping:
            return
        channel = self.client.channels.get(name)
        room = self.rooms[name] = _Room(
            channel, agent_answers=RateWindow(self.config.max_agent_answers_per_min)
        )
        # Subscribed before the attach goes out, so the replay after from_serial reaches it.
        subscription = channel.subscribe(lambda event: self._on_event(room, event))
        await channel.attach(from_serial=from_serial)
        await subscription
        await channel.presence.enter(self._presence("idle"))

    def _show(self, channel: Channel, status: str) -> None:
        """Update the agent's presence without waiting for the ``ok`` (it is only shown)."""
        self._spawn(_quietly(channel.presence.update(self._presence(status))))

    def _presence(self, status: str) -> dict[str, Any]:
        return {"kind": "agent", "status": status, "model": self.config.model}

    def member_of(self, room: _Room) -> bool:
        """``root.agents`` lists the room's agents once someone set it; until then every
        agent whose ``rooms`` match is in."""
        objects = room.channel.objects
        try:
            root = objects.get("root") if objects.serial is not None else None
        except Exception:
            root = None
        if isinstance(root, LiveMap):
            agents = root.get(AGENTS_KEY)
            if isinstance(agents, LiveMap):
                return self.name in agents
        return True

    # ------------------------------------------------------------------ triggers

    def _on_event(self, room: _Room, event: Event) -> None:
        if self.stopping:
            return
        if event.type == "create" and event.streaming is not True:
            self._consider(room, message_from_create(event), event.timestamp)
        elif event.type == "update" and event.status == "complete":
            # A streamed message triggers when it ends complete: read its whole text.
            self._spawn(self._consider_finished(room, event))

    async def _consider_finished(self, room: _Room, event: Event) -> None:
        assert isinstance(event.msg_serial, int)
        message = await self._message(room.channel, event.msg_serial)
        if message is not None:
            self._consider(room, message, event.timestamp)

    def _consider(self, room: _Room, message: Message, at_ms: int) -> None:
        decision = consider(
            name=self.name,
            policy=self.config.policy,
            message=message,
            max_chain_depth=self.config.max_chain_depth,
            agent_names=self.agent_names,
        )
        if not decision.answer:
            log.debug(
                "agent %s skips %s #%d: %s",
                self.name,
                room.channel.name,
                message.msg_serial,
                decision.reason,
            )
            return
        if at_ms / 1000 < self._started_at - TRIGGER_MAX_AGE_S:
            return  # found on start, too old to answer now
        if not self.member_of(room):
            log.debug("agent %s is not in root.agents of %s", self.name, room.channel.name)
            return
        self._spawn(self._trigger(room, message, decision.needs_judge), answer=True)

    async def _trigger(self, room: _Room, trigger: Message, judge: bool) -> None:
        # The context is read while the claim is made: one round trip less before the
        # first token.
        history: asyncio.Future[list[Message]] = asyncio.ensure_future(
            self._history(room.channel, 200)
        )
        try:
            await self._claimed_trigger(room, trigger, judge, history)
        finally:
            history.cancel()
            with contextlib.suppress(BaseException):
                await history

    async def _claimed_trigger(
        self,
        room: _Room,
        trigger: Message,
        judge: bool,
        history: asyncio.Future[list[Message]] | None,
    ) -> None:
        channel = room.channel
        key = f"answer:{self.name}:{trigger.msg_serial}"
        reply = await self._call(m.Claim(channel=channel.name, key=key, ttl_s=CLAIM_TTL_S))
        if not (isinstance(reply, m.Ok) and reply.granted is True):
            return  # another worker has it
        log.info("agent %s answers %s #%d", self.name, channel.name, trigger.msg_serial)
        # A trigger seen live is new: the claim is enough. One found on start (or after a
        # reconnect) may have been answered before this worker was there.
        replayed = trigger.timestamp < time.time() * 1000 - LIVE_TRIGGER_MS
        if replayed and await self._answered(channel, trigger):
            return
        if agent_info(trigger) is not None and not room.agent_answers.take():
            log.warning(
                "agent %s: the cap of %d answers a minute to agents in %s is reached",
                self.name,
                self.config.max_agent_answers_per_min,
                channel.name,
            )
            return
        if judge and not await self._judge(channel, trigger):
            return
        if self.config.concurrency == "interrupt":
            for running in list(room.running.values()):
                if running is not None and running.msg_serial is not None:
                    with contextlib.suppress(Exception):
                        await channel.cancel(running.msg_serial, reason="a newer message came")
        lock = room.queue if self.config.concurrency == "queue" else None
        if judge or (lock is not None and lock.locked()):
            history = None  # read again when the answer starts: the room moved on
        async with lock if lock is not None else contextlib.nullcontext():
            room.running[trigger.msg_serial] = None
            try:
                await self.answer(room, trigger, history)
            finally:
                room.running.pop(trigger.msg_serial, None)
                if not room.running and not self.stopping:
                    self._show(channel, "idle")

    async def _answered(self, channel: Channel, trigger: Message) -> bool:
        """Whether an answer of this agent to ``trigger`` is already in the room."""
        async for page in channel.history(
            limit=200, direction="forwards", start=trigger.msg_serial
        ):
            for message in page.messages:
                info = agent_info(message)
                if (
                    message.extras.get("reply_to") == trigger.msg_serial
                    and message.client_id == self.name
                    and message.name == "text"
                    and info is not None
                ):
                    return True
            break  # the answer follows its trigger closely; one page is enough
        return False

    async def _judge(self, channel: Channel, trigger: Message) -> bool:
        """The `auto` policy: a short model call decides whether the room needs the agent."""
        history = await self._history(channel, 20)
        turns = [
            Turn(m.client_id or "server", message_text(m))
            for m in history
            if m.msg_serial <= trigger.msg_serial and m.name == "text"
        ][-10:]
        request = ProviderRequest(
            agent_name=f"{self.name}-judge",
            system_prompt=(
                f"You decide whether {self.name} should reply to the last message of a group "
                f"chat. {self.name} is: {self.config.system_prompt[:500]}\nAnswer YES or NO, "
                "then a short reason. Say NO when people talk among themselves or someone "
                "else was asked."
            ),
            messages=tuple(turns),
            max_tokens=30,
            temperature=0,
        )
        text = ""
        try:
            async with _closing(self.provider.stream(request)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        text += event.text
        except ProviderError as exc:
            log.warning(
                "agent %s: the auto judge failed (%s); staying silent", self.name, exc.message
            )
            return False
        verdict, reason = parse_judgement(text.removeprefix("[scripted]").strip())
        log.info(
            "agent %s auto-judge on %s #%d: %s (%s)",
            self.name,
            channel.name,
            trigger.msg_serial,
            "answer" if verdict else "stay silent",
            reason,
        )
        return verdict

    # ------------------------------------------------------------------ the answer

    async def answer(
        self,
        room: _Room,
        trigger: Message,
        history: asyncio.Future[list[Message]] | None = None,
    ) -> None:
        """Answer ``trigger`` in ``room``: one streamed message (or a visible refusal when
        the budget is spent, or nothing for an empty or ``[skip]`` answer)."""
        channel = room.channel
        depth = depth_of(trigger) + 1
        extras: dict[str, Any] = {
            "reply_to": trigger.msg_serial,
            "agent": {
                "name": self.name,
                "provider": self.config.provider,
                "model": self.config.model,
                "depth": depth,
            },
        }
        if self._over_budget(channel.name):
            await channel.publish(
                f"I have used up today's budget for {channel.name}, so I cannot answer "
                "until tomorrow.",
                extras={**extras, "budget_exhausted": True},
            )
            return
        self._show(channel, "thinking")
        request = await self._request(channel, trigger, history)
        answer = _Answer(channel, extras)
        room.running[trigger.msg_serial] = answer.stream
        usage = Usage(0, 0)
        try:
            for _ in range(MAX_TOOL_ROUNDS):
                round_text, calls, used = await self._one_round(request, answer)
                usage = Usage(
                    usage.input_tokens + used.input_tokens, usage.output_tokens + used.output_tokens
                )
                if not calls or answer.stream.cancelled.is_set():
                    break
                results = []
                for call in calls:
                    results.append(await self._run_tool(channel, call, extras))
                request = _continue(request, round_text, results)
                answer.next_round()
            await answer.finish(self._usage_extras(channel.name, usage))
        except ProviderError as exc:
            log.warning(
                "agent %s: %s failed on %s #%d: %s",
                self.name,
                self.config.provider,
                channel.name,
                trigger.msg_serial,
                exc.message,
            )
            await answer.fail(exc.message, self._usage_extras(channel.name, usage))
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(answer.fail(SHUTDOWN_REASON, {}))
            raise

    async def _one_round(
        self, request: ProviderRequest, answer: _Answer
    ) -> tuple[str, list[ToolCall], Usage]:
        """Stream one provider call into the answer; stop it at once on a cancel."""
        calls: list[ToolCall] = []
        usage = Usage(0, 0)
        text = ""
        streaming_shown = False

        async def consume() -> None:
            nonlocal usage, text, streaming_shown
            async with _closing(self.provider.stream(request)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        text += event.text
                        if await answer.add(event.text) and not streaming_shown:
                            streaming_shown = True
                            self._show(answer.channel, "streaming")
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

    async def _run_tool(
        self, channel: Channel, call: ToolCall, extras: dict[str, Any]
    ) -> ToolResult:
        """Run a tool call and show it in the room as a ``tool`` message."""
        try:
            output = await call_tool(self.tools, channel, call.name, call.arguments)
            result = ToolResult(call, output)
        except ToolError as exc:
            result = ToolResult(call, str(exc), is_error=True)
        log.info(
            "agent %s called %s on %s: %s",
            self.name,
            call.name,
            channel.name,
            "error" if result.is_error else "ok",
        )
        await channel.publish(
            {
                "tool": call.name,
                "arguments": call.arguments,
                "result": result.output,
                "error": result.is_error,
            },
            name="tool",
            extras={"reply_to": extras["reply_to"], "agent": extras["agent"]},
        )
        return result

    async def _request(
        self,
        channel: Channel,
        trigger: Message,
        prefetched: asyncio.Future[list[Message]] | None = None,
    ) -> ProviderRequest:
        history = await (prefetched if prefetched is not None else self._history(channel, 200))
        lookup = {message.msg_serial: message for message in history}
        lookup.setdefault(trigger.msg_serial, trigger)
        chain = reply_chain(trigger, lookup)
        summary = ""
        with contextlib.suppress(Exception):
            await channel.objects.sync()
            root = channel.objects.get("root")
            shared = (
                shared_values(root.entries(), RESERVED_KEYS) if isinstance(root, LiveMap) else {}
            )
            summary = objects_summary(channel.polls.list(), channel.boards.list(), shared)
        specs = [tool.spec for tool in self.tools.values()]
        return build_request(self.config, channel.name, history, trigger, chain, summary, specs)

    async def _history(self, channel: Channel, limit: int) -> list[Message]:
        async for page in channel.history(limit=limit):
            return page.messages
        return []

    async def _message(self, channel: Channel, msg_serial: int) -> Message | None:
        async for page in channel.history(limit=1, direction="forwards", start=msg_serial - 1):
            found = page.messages[0] if page.messages else None
            return found if found is not None and found.msg_serial == msg_serial else None
        return None

    async def _call(self, request: m.Request) -> m.ServerMessage:
        assert self.client is not None
        return await self.client.call(request)

    # ------------------------------------------------------------------ budgets

    def _day_key(self, channel: str) -> tuple[str, str]:
        return channel, time.strftime("%Y-%m-%d", time.gmtime())

    def _over_budget(self, channel: str) -> bool:
        tokens, usd = self._spend.get(self._day_key(channel), (0, 0.0))
        budget_tokens, budget_usd = self.config.budget_tokens, self.config.budget_usd
        return (budget_tokens is not None and tokens >= budget_tokens) or (
            budget_usd is not None and usd >= budget_usd
        )

    def _usage_extras(self, channel: str, usage: Usage) -> dict[str, Any]:
        cost = cost_usd(usage, self.config.price_per_mtok_in, self.config.price_per_mtok_out)
        key = self._day_key(channel)
        tokens, usd = self._spend.get(key, (0, 0.0))
        self._spend[key] = (tokens + usage.input_tokens + usage.output_tokens, usd + cost)
        return {
            "usage": {
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cost_usd": round(cost, 6),
            }
        }


class _Answer:
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
        if not self._open:
            if self._held.strip() and not self._held.strip().startswith(SKIP):
                await self._start()
                await self.stream.append(self._held)
            else:
                return  # silent
        status: m.Status = "cancelled" if self.stream.cancelled.is_set() else "complete"
        await self.stream.end(status, extras=extras)

    async def fail(self, reason: str, extras: dict[str, Any]) -> None:
        if not self._open:
            await self._start()
        await self.stream.end("failed", extras={**extras, "failure": reason})


def _continue(request: ProviderRequest, text: str, results: list[ToolResult]) -> ProviderRequest:
    return replace(request, messages=(*request.messages, ToolRound(text, tuple(results))))


async def _quietly(coro: Any) -> None:
    with contextlib.suppress(Exception):
        await coro


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("agent task failed", exc_info=task.exception())


class AgentRuntime:
    """Every configured agent, answering in its rooms on the server at ``server``.

    Args:
        server: The server's HTTP base URL (``http://127.0.0.1:8000``); the WebSocket URL
            comes from it.
        agents: The agents to run.
        key: An API key ``NAME:SECRET`` the agents connect with (they may take their own
            names as client_id only with a key).
        environ: Where provider API keys and base URLs are read.
    """

    def __init__(
        self,
        server: str,
        agents: list[AgentConfig],
        *,
        key: str | None,
        environ: Mapping[str, str] | None = None,
        providers: Mapping[str, Provider] | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        names = frozenset(agent.name for agent in agents)
        self.workers = [
            AgentWorker(
                agent,
                server,
                key=key,
                agent_names=names,
                environ=environ,
                provider=(providers or {}).get(agent.name),
            )
            for agent in agents
        ]

    async def start(self) -> None:
        for worker in self.workers:
            await worker.start()

    async def aclose(self, grace_s: float = 5.0) -> None:
        await asyncio.gather(*(worker.aclose(grace_s) for worker in self.workers))

    async def __aenter__(self) -> AgentRuntime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@contextlib.asynccontextmanager
async def _closing(events: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close a provider's stream however the reading ends (its HTTP stream with it)."""
    try:
        yield events
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


__all__ = ["AgentRuntime", "AgentWorker"]
