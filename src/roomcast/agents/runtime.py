"""The agent runtime: agents as participants of rooms, through the SDK (docs/agents.md).

Each agent is one SDK connection with its own ``client_id``. It finds its rooms (the
channel list and ``meta:channels``), attaches to each from a serial (so nothing posted
meanwhile is missed), shows its presence, and for each finished message decides whether to
answer. Before doing anything for a trigger it ``claim``s it, so that exactly one worker
answers, wherever the workers run (in ``roomcast serve`` or in ``roomcast agents``
processes). The answer is one streamed message that replies to the trigger.

A message may name the agents its sender waits for (``extras.awaits``, set by the AI SDK
chat endpoint): an agent named there that does not answer it publishes a marker
(``agent.silent``, with the reason) instead, so that the sender knows the answers are
complete. The server's ``agent.regenerate`` signal asks for another answer to a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import zlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from roomcast.agents.config import AgentConfig, agent_label
from roomcast.agents.providers import make_provider
from roomcast.agents.providers.base import (
    Provider,
    ProviderError,
    ProviderRequest,
    Usage,
)
from roomcast.client import Channel, Client, Event, LiveMap, Message, connect
from roomcast.client.link import Dial, dial_websocket
from roomcast.protocol.answering import REGENERATE_KEY, SILENT, awaits
from roomcast.protocol.capabilities import AGENT_CLAIM_PREFIXES
from roomcast.protocol.rollup import message_from_create

from .answer import (
    AnswerMessage,
    agent_did,
    run_tool,
    stream_round,
    with_tool_results,
)
from .budget import DailySpend
from .context import build_request, objects_summary, shared_values
from .judge import room_needs_agent
from .mcp import McpToolbox
from .recent import KEPT_MESSAGES
from .room import Room, answered_by, full_reply_chain, latest_messages, message_at
from .rooms import AgentRooms
from .tools import (
    RESERVED_KEYS,
    Tool,
    ToolError,
    resolve_tools,
    room_state,
)
from .triggers import Decision, agent_info, consider, depth_of

log = logging.getLogger("roomcast.agents")

[ANSWER_CLAIMS] = AGENT_CLAIM_PREFIXES  # an answer's claim: reserved to key holders

CLAIM_TTL_S = 600.0
TRIGGER_MAX_AGE_S = 120.0  # older triggers found on start are not answered any more
MAX_TOOL_ROUNDS = 5
COORDINATION_CONNECTIONS = 4  # for claims and context reads, besides the streams' own
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
        dial: Dial = dial_websocket,
    ) -> None:
        self.config = config
        self.name = config.name
        self.server = server
        self.key = key
        self.dial = dial
        self.agent_names = agent_names
        self.provider = provider or make_provider(config, environ)
        try:
            self.tools: dict[str, Tool] = resolve_tools(config.tools)
        except ToolError as exc:
            raise ToolError(f"{config.place}: tools: {exc}") from None
        self.mcp = McpToolbox(config.mcp_servers, environ, config.name, config.place)
        self.client: Client | None = None
        # Claims and context reads go over connections of their own: replies on one
        # connection come in order, and on the first they would wait behind the
        # acknowledgements of every answer streaming in the other rooms. The rooms are
        # spread over several (a room always on the same one, so its claims and reads keep
        # their order): a context read waits for its turn, and with many rooms asking at
        # once the reads of one connection would follow one another.
        self.coordination: list[Client] = []
        self.watching = AgentRooms(
            config,
            on_event=self._on_event,
            on_regenerate=self._regenerate_in,
            spawn=self._spawn,
            read=lambda name, serial: message_at(self._reads_of(name), serial),
        )
        self.stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._answers: set[asyncio.Task[Any]] = set()
        # Answers streaming at once, over all rooms: past what the machine sustains, every
        # answer would slow down together and none would end; the others wait their turn.
        self.answer_slots = asyncio.Semaphore(config.max_concurrent_answers)
        self.spend = DailySpend(config)
        self._started_at = time.time()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect, then answer in the rooms that match the agent's ``rooms``, attached
        while they are active (:class:`AgentRooms`)."""
        await self.mcp.start()
        self.client = await connect(self.server, client_id=self.name, key=self.key, dial=self.dial)
        for _ in range(COORDINATION_CONNECTIONS):
            self.coordination.append(
                await connect(self.server, client_id=self.name, key=self.key, dial=self.dial)
            )
        await self.watching.start(self.client, self.server, self.key)
        label = agent_label(self.config.provider, self.config.model)
        log.info("agent %s is up (%s, %s)", self.name, label, self.config.policy)

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Stop taking triggers, let running answers finish for ``grace_s``, then end what
        is still streaming as ``failed`` ("server shutting down")."""
        self.stopping = self.watching.stopping = True
        if self._answers:
            _, pending = await asyncio.wait(self._answers, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for task in self._tasks:
            task.cancel()
        for client in (self.client, *self.coordination):
            if client is not None:
                await client.close()
        await self.mcp.aclose()
        await self.provider.aclose()

    @property
    def rooms(self) -> dict[str, Room]:
        """The rooms attached now, by name."""
        return self.watching.rooms

    def offered_tools(self) -> dict[str, Tool]:
        """The tools the model is offered now: its own and those of the MCP servers that
        are connected."""
        return {**self.tools, **self.mcp.tools()}

    def _reads(self, room: Room) -> Channel:
        """``room``'s channel on the coordination connection: for claims and reads, which
        should not wait behind the streams' acknowledgements."""
        return self._reads_of(room.channel.name) if self.coordination else room.channel

    def _reads_of(self, name: str) -> Channel:
        if not self.coordination:
            assert self.client is not None, "the agent is not connected"
            return self.client.channels.get(name)
        client = self.coordination[zlib.crc32(name.encode()) % len(self.coordination)]
        return client.channels.get(name)

    def _spawn(self, coro: Any, *, answer: bool = False) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        group = self._answers if answer else self._tasks
        group.add(task)
        task.add_done_callback(group.discard)
        task.add_done_callback(_log_failure)
        return task

    # ------------------------------------------------------------------ triggers

    def _on_event(self, room: Room, event: Event) -> None:
        if self.stopping:
            return
        if event.type == "create" and event.streaming is not True:
            self._consider(room, message_from_create(event), event.timestamp)
        elif event.type == "update" and event.status == "complete" and event.client_id != self.name:
            # A streamed message triggers when it ends complete: read its whole text (not
            # for the agent's own answers: it never answers itself).
            self._spawn(self._consider_finished(room, event))

    async def _consider_finished(self, room: Room, event: Event) -> None:
        assert isinstance(event.msg_serial, int)
        message = await room.recent.finished(event.msg_serial)
        if message is None:
            message = await message_at(self._reads(room), event.msg_serial)
        if message is not None:
            self._consider(room, message, event.timestamp)

    def _decision(self, message: Message, policy: str) -> Decision:
        return consider(
            name=self.name,
            policy=policy,
            message=message,
            max_chain_depth=self.config.max_chain_depth,
            agent_names=self.agent_names,
        )

    def _consider(self, room: Room, message: Message, at_ms: int) -> None:
        decision = self._decision(message, self.config.policy)
        if at_ms / 1000 < self._started_at - TRIGGER_MAX_AGE_S:
            return  # found on start, too old to answer now
        if decision.answer and not room.lists(self.name):
            decision = Decision(False, "not in the room's agents")
        if not decision.answer:
            log.debug(
                "agent %s skips %s #%d: %s",
                self.name,
                room.channel.name,
                message.msg_serial,
                decision.reason,
            )
            if self.name in awaits(message):
                self._spawn(self._claimed_silence(room, message, decision.reason))
            return
        self._spawn(self._trigger(room, message, decision), answer=True)

    def _regenerate_in(self, room: Room, msg_serial: int, again: str) -> None:
        """The server's ``agent.regenerate`` names this agent: answer once more."""
        if not self.stopping:
            self._spawn(self._regenerate(room, msg_serial, again), answer=True)

    async def _regenerate(self, room: Room, msg_serial: int, again: str) -> None:
        """Answer ``msg_serial`` once more (the person asked this agent by name): every
        rule but the policy holds, and the answers carry ``extras.regenerate``."""
        trigger = await room.recent.finished(msg_serial)  # kept whole: no read
        if trigger is None or trigger.status == "streaming":
            trigger = await message_at(self._reads(room), msg_serial)
        if trigger is None:
            return
        decision = self._decision(trigger, "always")
        if decision.answer and not room.lists(self.name):
            decision = Decision(False, "not in the room's agents")
        if not decision.answer:
            await self._claimed_silence(room, trigger, decision.reason, again)
            return
        await self._trigger(room, trigger, decision, again)

    async def _trigger(
        self, room: Room, trigger: Message, decision: Decision, again: str | None = None
    ) -> None:
        # A room's latest messages are kept from its events; when they are not, the
        # context is read while the claim is made: one round trip less before the first
        # token.
        if room.recent.serial is not None or room.recent.expecting:
            await self._claimed_trigger(room, trigger, decision, None, again)
            return
        history = asyncio.ensure_future(latest_messages(self._reads(room), KEPT_MESSAGES))
        try:
            await self._claimed_trigger(room, trigger, decision, history, again)
        finally:
            history.cancel()
            with contextlib.suppress(BaseException):
                await history

    def _claim_key(self, trigger: Message, again: str | None) -> str:
        key = f"{ANSWER_CLAIMS}{self.name}:{trigger.msg_serial}"
        return key if again is None else f"{key}:{again}"

    async def _claimed_silence(
        self, room: Room, trigger: Message, reason: str, again: str | None = None
    ) -> None:
        """Say once (one worker claims it) that this agent stays silent on ``trigger``."""
        if await self._reads(room).claim(self._claim_key(trigger, again), ttl_s=CLAIM_TTL_S):
            await self._stay_silent(room, trigger, reason, again)

    async def _stay_silent(
        self, room: Room, trigger: Message, reason: str, again: str | None = None
    ) -> None:
        """The ``agent.silent`` marker, when ``trigger`` awaits this agent or the agent
        was asked again: whoever waits for its answer knows that none comes."""
        if again is None and self.name not in awaits(trigger):
            return
        with contextlib.suppress(Exception):
            await room.channel.publish(
                reason, name=SILENT, extras=self._answer_extras(trigger, again)
            )

    async def _claimed_trigger(
        self,
        room: Room,
        trigger: Message,
        decision: Decision,
        history: asyncio.Future[list[Message]] | None,
        again: str | None = None,
    ) -> None:
        channel, reads = room.channel, self._reads(room)
        # A trigger seen live is new: the claim is enough. One found on start (or after a
        # reconnect) may have been answered before this worker was there. Its age is taken
        # now, as it comes: a claim that a loaded store answers late does not make it old.
        replayed = trigger.timestamp < time.time() * 1000 - LIVE_TRIGGER_MS
        if not await reads.claim(self._claim_key(trigger, again), ttl_s=CLAIM_TTL_S):
            return  # another worker has it
        if again is None and replayed and await answered_by(reads, self.name, trigger):
            return
        if agent_info(trigger) is not None and not room.agent_answers.take():
            log.warning(
                "agent %s: the cap of %d answers a minute to agents in %s is reached",
                self.name,
                self.config.max_agent_answers_per_min,
                channel.name,
            )
            await self._stay_silent(room, trigger, "the cap of answers to agents", again)
            return
        if not await self._decide(reads, trigger, decision):
            await self._stay_silent(room, trigger, "the auto judge said no", again)
            return
        if self.config.concurrency == "interrupt":
            for running in list(room.running.values()):
                if running is not None and running.msg_serial is not None:
                    with contextlib.suppress(Exception):
                        await channel.cancel(running.msg_serial, reason="a newer message came")
        lock = room.queue if self.config.concurrency == "queue" else None
        waits = (lock is not None and lock.locked()) or self.answer_slots.locked()
        if decision.needs_judge or waits:
            history = None  # read again when the answer starts: the room moved on
        if waits:
            self.watching.show(room, "thinking", queued=True)  # not idle while someone waits
        async with lock if lock is not None else contextlib.nullcontext():
            room.running[trigger.msg_serial] = None
            try:
                async with self.answer_slots:
                    answered = await self.answer(room, trigger, history, again)
                if not answered:
                    await self._stay_silent(room, trigger, "nothing to say", again)
            finally:
                room.running.pop(trigger.msg_serial, None)
                if not room.running and not self.stopping:
                    self.watching.show(room, "idle")

    async def _decide(self, channel: Channel, trigger: Message, decision: Decision) -> bool:
        """Whether to answer ``trigger`` (the ``auto`` judge decides when the policy says
        so), logged once, with the reason, when it is decided."""
        answering, reason = True, decision.reason
        if decision.needs_judge:
            answering, verdict = await room_needs_agent(
                self.provider, self.config, channel, trigger
            )
            reason = f"the auto judge: {verdict}"
        log.info(
            "agent %s %s %s #%d (%s)",
            self.name,
            "answers" if answering else "stays silent on",
            channel.name,
            trigger.msg_serial,
            reason,
        )
        return answering

    # ------------------------------------------------------------------ the answer

    def _answer_extras(self, trigger: Message, again: str | None = None) -> dict[str, Any]:
        """``reply_to`` and ``agent`` of the messages that answer ``trigger`` (and
        ``regenerate`` when the agent was asked again)."""
        extras: dict[str, Any] = {
            "reply_to": trigger.msg_serial,
            "agent": {
                "name": self.name,
                "provider": self.config.provider,
                "model": self.config.model,
                "depth": depth_of(trigger) + 1,
            },
        }
        if again is not None:
            extras[REGENERATE_KEY] = again
        return extras

    async def answer(
        self,
        room: Room,
        trigger: Message,
        history: asyncio.Future[list[Message]] | None = None,
        again: str | None = None,
    ) -> bool:
        """Answer ``trigger`` in ``room``: one streamed message (or a visible refusal when
        the budget is spent, or nothing for an empty or ``[skip]`` answer).

        Returns:
            Whether the agent said something (False: it stayed silent).
        """
        channel = room.channel
        extras = self._answer_extras(trigger, again)
        if self.spend.over_budget(channel.name):
            await channel.publish(
                f"I have used up today's budget for {channel.name}, so I cannot answer "
                "until tomorrow.",
                extras={**extras, "budget_exhausted": True},
            )
            return True
        self.watching.show(room, "thinking")
        request = await self._request(room, trigger, history)
        answer = AnswerMessage(channel, extras, on_start=room.recent.own)
        room.running[trigger.msg_serial] = answer.stream
        spent: list[Usage] = []  # each round's usage, also when a later round fails
        try:
            await self._rounds(room, request, answer, extras, spent)
            await answer.finish(self.spend.record(channel.name, total(spent)))
        except ProviderError as exc:
            log.warning(
                "agent %s: %s failed on %s #%d: %s",
                self.name,
                self.config.provider,
                channel.name,
                trigger.msg_serial,
                exc.message,
            )
            await answer.fail(exc.message, self.spend.record(channel.name, total(spent)))
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(answer.fail(SHUTDOWN_REASON, {}))
            raise
        return answer.stream.msg_serial is not None

    async def _rounds(
        self,
        room: Room,
        request: ProviderRequest,
        answer: AnswerMessage,
        extras: dict[str, Any],
        spent: list[Usage],
    ) -> None:
        """The model's rounds of one answer: after each round that calls tools, the tools
        run (each shown in the room) and the model goes on with their results."""
        channel = room.channel
        for _ in range(MAX_TOOL_ROUNDS):
            done = agent_did(self.name, channel, request.state, answer, extras)
            found = await stream_round(
                self.provider, request, answer, lambda: self.watching.show(room, "streaming"), done
            )
            spent.append(found.usage)
            if not found.calls or answer.stream.cancelled.is_set():
                return
            results = list(found.ran)  # the agent's own calls, for its next round
            for call in found.calls:
                tool_extras = {**extras, **answer.position()}
                tools = self.offered_tools()
                results.append(await run_tool(self.name, tools, channel, call, tool_extras, answer))
                if answer.stream.cancelled.is_set():
                    return
            request = with_tool_results(request, found.text, results)
            if request.state is not None:  # the tools may have changed it
                with contextlib.suppress(Exception):
                    request = replace(request, state=await _room_state(channel))
            answer.next_round()

    async def _request(
        self,
        room: Room,
        trigger: Message,
        prefetched: asyncio.Future[list[Message]] | None = None,
    ) -> ProviderRequest:
        channel, reads = room.channel, self._reads(room)
        history = await prefetched if prefetched is not None else None
        if history is None:
            history = await room.recent.latest(trigger.msg_serial)
        if history is None:
            history = await latest_messages(reads, KEPT_MESSAGES)
        lookup = {message.msg_serial: message for message in history}
        lookup.setdefault(trigger.msg_serial, trigger)
        chain = await full_reply_chain(trigger, lookup, reads)
        summary = ""
        state: dict[str, Any] | None = None
        with contextlib.suppress(Exception):
            state = await _room_state(channel)
            root = channel.objects.get("root")
            shared = (
                shared_values(root.entries(), RESERVED_KEYS) if isinstance(root, LiveMap) else {}
            )
            summary = objects_summary(channel.polls.list(), channel.boards.list(), shared)
        specs = [tool.spec for tool in self.offered_tools().values()]
        request = build_request(self.config, channel.name, history, trigger, chain, summary, specs)
        return replace(request, room=channel.name, state=state)


def total(spent: list[Usage]) -> Usage:
    return Usage(sum(u.input_tokens for u in spent), sum(u.output_tokens for u in spent))


async def _room_state(channel: Channel) -> dict[str, Any]:
    await channel.objects.sync()
    return room_state(channel.objects)


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
        providers: Models by agent name, instead of the ones their configuration names.
        dial: How the agents' connections are opened (a WebSocket to ``server`` by
            default; ``roomcast serve`` passes one that stays in its process).
    """

    def __init__(
        self,
        server: str,
        agents: list[AgentConfig],
        *,
        key: str | None,
        environ: Mapping[str, str] | None = None,
        providers: Mapping[str, Provider] | None = None,
        dial: Dial = dial_websocket,
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
                dial=dial,
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
