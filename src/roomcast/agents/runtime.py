"""The agent runtime: agents as participants of rooms, through the SDK (docs/agents.md).

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
from collections.abc import Mapping
from typing import Any

from roomcast.agents.config import AgentConfig
from roomcast.agents.providers import make_provider
from roomcast.agents.providers.base import (
    Provider,
    ProviderError,
    ProviderRequest,
    ToolCall,
    ToolResult,
    Usage,
)
from roomcast.client import Channel, Client, Event, LiveMap, Message, connect
from roomcast.client.rest import list_channels
from roomcast.protocol.capabilities import AGENT_CLAIM_PREFIXES
from roomcast.protocol.patterns import pattern_matches
from roomcast.protocol.rollup import message_from_create

from .answer import AnswerMessage, stream_round, with_tool_results
from .budget import DailySpend
from .context import build_request, objects_summary, reply_chain, shared_values
from .judge import room_needs_agent
from .room import Room, answered_by, latest_messages, message_at
from .tools import RESERVED_KEYS, Tool, ToolError, call_tool, resolve_tools
from .triggers import RateWindow, agent_info, consider, depth_of

log = logging.getLogger("roomcast.agents")

[ANSWER_CLAIMS] = AGENT_CLAIM_PREFIXES  # an answer's claim: reserved to key holders

META_CHANNELS = "meta:channels"
CLAIM_TTL_S = 600.0
STARTUP_LOOKBACK = 200  # events re-read per room at start, for triggers posted just before
TRIGGER_MAX_AGE_S = 120.0  # older triggers found on start are not answered any more
MAX_TOOL_ROUNDS = 5
LIVE_TRIGGER_MS = 5000  # a trigger younger than this was seen live, not found on start
SHUTDOWN_REASON = "server shutting down"


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
        self.rooms: dict[str, Room] = {}
        self.stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._answers: set[asyncio.Task[Any]] = set()
        self.spend = DailySpend(config)
        self._started_at = time.time()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect, then watch every room that matches the agent's ``rooms``: those that
        exist now, and those ``meta:channels`` announces later."""
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
        room = self.rooms[name] = Room(
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

    # ------------------------------------------------------------------ triggers

    def _on_event(self, room: Room, event: Event) -> None:
        if self.stopping:
            return
        if event.type == "create" and event.streaming is not True:
            self._consider(room, message_from_create(event), event.timestamp)
        elif event.type == "update" and event.status == "complete":
            # A streamed message triggers when it ends complete: read its whole text.
            self._spawn(self._consider_finished(room, event))

    async def _consider_finished(self, room: Room, event: Event) -> None:
        assert isinstance(event.msg_serial, int)
        message = await message_at(room.channel, event.msg_serial)
        if message is not None:
            self._consider(room, message, event.timestamp)

    def _consider(self, room: Room, message: Message, at_ms: int) -> None:
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
        if not room.lists(self.name):
            log.debug("agent %s is not in root.agents of %s", self.name, room.channel.name)
            return
        self._spawn(self._trigger(room, message, decision.needs_judge), answer=True)

    async def _trigger(self, room: Room, trigger: Message, judge: bool) -> None:
        # The context is read while the claim is made: one round trip less before the
        # first token.
        history: asyncio.Future[list[Message]] = asyncio.ensure_future(
            latest_messages(room.channel, 200)
        )
        try:
            await self._claimed_trigger(room, trigger, judge, history)
        finally:
            history.cancel()
            with contextlib.suppress(BaseException):
                await history

    async def _claimed_trigger(
        self,
        room: Room,
        trigger: Message,
        judge: bool,
        history: asyncio.Future[list[Message]] | None,
    ) -> None:
        channel = room.channel
        key = f"{ANSWER_CLAIMS}{self.name}:{trigger.msg_serial}"
        if not await channel.claim(key, ttl_s=CLAIM_TTL_S):
            return  # another worker has it
        log.info("agent %s answers %s #%d", self.name, channel.name, trigger.msg_serial)
        # A trigger seen live is new: the claim is enough. One found on start (or after a
        # reconnect) may have been answered before this worker was there.
        replayed = trigger.timestamp < time.time() * 1000 - LIVE_TRIGGER_MS
        if replayed and await answered_by(channel, self.name, trigger):
            return
        if agent_info(trigger) is not None and not room.agent_answers.take():
            log.warning(
                "agent %s: the cap of %d answers a minute to agents in %s is reached",
                self.name,
                self.config.max_agent_answers_per_min,
                channel.name,
            )
            return
        if judge and not await room_needs_agent(self.provider, self.config, channel, trigger):
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

    # ------------------------------------------------------------------ the answer

    def _answer_extras(self, trigger: Message) -> dict[str, Any]:
        """``reply_to`` and ``agent`` of the messages that answer ``trigger``."""
        return {
            "reply_to": trigger.msg_serial,
            "agent": {
                "name": self.name,
                "provider": self.config.provider,
                "model": self.config.model,
                "depth": depth_of(trigger) + 1,
            },
        }

    async def answer(
        self,
        room: Room,
        trigger: Message,
        history: asyncio.Future[list[Message]] | None = None,
    ) -> None:
        """Answer ``trigger`` in ``room``: one streamed message (or a visible refusal when
        the budget is spent, or nothing for an empty or ``[skip]`` answer)."""
        channel = room.channel
        extras = self._answer_extras(trigger)
        if self.spend.over_budget(channel.name):
            await channel.publish(
                f"I have used up today's budget for {channel.name}, so I cannot answer "
                "until tomorrow.",
                extras={**extras, "budget_exhausted": True},
            )
            return
        self._show(channel, "thinking")
        request = await self._request(channel, trigger, history)
        answer = AnswerMessage(channel, extras)
        room.running[trigger.msg_serial] = answer.stream
        usage = Usage(0, 0)
        try:
            for _ in range(MAX_TOOL_ROUNDS):
                round_text, calls, used = await stream_round(
                    self.provider, request, answer, lambda: self._show(channel, "streaming")
                )
                usage = Usage(
                    usage.input_tokens + used.input_tokens, usage.output_tokens + used.output_tokens
                )
                if not calls or answer.stream.cancelled.is_set():
                    break
                results = []
                for call in calls:
                    results.append(await self._run_tool(channel, call, extras))
                request = with_tool_results(request, round_text, results)
                answer.next_round()
            await answer.finish(self.spend.record(channel.name, usage))
        except ProviderError as exc:
            log.warning(
                "agent %s: %s failed on %s #%d: %s",
                self.name,
                self.config.provider,
                channel.name,
                trigger.msg_serial,
                exc.message,
            )
            await answer.fail(exc.message, self.spend.record(channel.name, usage))
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(answer.fail(SHUTDOWN_REASON, {}))
            raise

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
        history = await (prefetched if prefetched is not None else latest_messages(channel, 200))
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
        """Connect every agent and let it answer in its rooms."""
        for worker in self.workers:
            await worker.start()

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Stop every agent; running answers get ``grace_s`` to finish."""
        await asyncio.gather(*(worker.aclose(grace_s) for worker in self.workers))

    async def __aenter__(self) -> AgentRuntime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


__all__ = ["AgentRuntime", "AgentWorker"]
