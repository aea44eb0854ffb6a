"""What an agent reads before it answers: the room's history, within a token budget.

The context is built from the channel itself (docs/agents.md): the last messages with
their speakers' names, the reply chain of the trigger, the agent's own earlier answers (as
its own turns), and a summary of the room's live objects. Nobody re-sends anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from roomcast.agents.config import AgentConfig
from roomcast.agents.providers.base import ProviderRequest, ToolSpec, Turn
from roomcast.client import Board, Poll
from roomcast.protocol.messages import Message

from .triggers import SKIP, message_text, reply_to

CHARS_PER_TOKEN = 4  # a rough estimate, good enough for a budget
CONTEXT_TOKENS = 6000  # how much history an answer reads at most
SUMMARY_CHARS = 3000
REPLY_DEPTH = 5  # how far up a trigger's reply chain the context goes


def estimate_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


def visible(message: Message) -> bool:
    """Messages that belong in a model's context: finished text and tool messages."""
    if message.deleted:
        return False
    return message.name in ("text", "tool") and message.status in ("complete", "cancelled")


def as_turn(message: Message) -> Turn:
    text = message_text(message)
    if message.name == "tool":
        text = f"[tool] {text}"
    if message.status == "cancelled":
        text += " [stopped before the end]"
    return Turn(speaker=message.client_id or "server", text=text)


def select(
    history: Sequence[Message], trigger: Message, chain: Sequence[Message], budget: int
) -> list[Message]:
    """The newest messages up to the trigger that fit ``budget`` tokens, oldest first, with
    the trigger's reply chain kept even when it is older than the window."""
    chosen: list[Message] = [trigger]
    used = estimate_tokens(message_text(trigger))
    for message in reversed(history):
        if message.msg_serial >= trigger.msg_serial or not visible(message):
            continue
        cost = estimate_tokens(message_text(message)) + 2
        if used + cost > budget:
            break
        chosen.append(message)
        used += cost
    known = {m.msg_serial for m in chosen}
    for message in chain:
        if message.msg_serial not in known and visible(message):
            chosen.append(message)
            known.add(message.msg_serial)
    return sorted(chosen, key=lambda m: m.msg_serial)


def objects_summary(polls: Sequence[Poll], boards: Sequence[Board], shared: dict[str, str]) -> str:
    """The room's shared state in a few lines, for the system prompt."""
    lines: list[str] = []
    for poll in polls:
        counts = poll.counts
        options = ", ".join(
            f"{option_id} {label!r}: {counts.get(option_id, 0)}"
            for option_id, label in poll.options.items()
        )
        state = "closed" if poll.closed else "open"
        lines.append(f"- poll {poll.poll_id} ({state}) {poll.question!r}: {options}")
    for board in boards:
        items = "; ".join(f"{'[x]' if i.done else '[ ]'} {i.text}" for i in board.items[-20:])
        lines.append(f"- board {board.board_id} {board.title!r}: {items or 'empty'}")
    for key, value in shared.items():
        lines.append(f"- shared {key} = {value}")
    text = "\n".join(lines)
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 3] + "..."


def system_prompt(agent: AgentConfig, channel: str, summary: str, tools: bool) -> str:
    parts = [
        agent.system_prompt,
        f"You are {agent.name} in the group chat {channel}. Each message you see starts "
        "with its speaker's name; several people and agents may be talking. "
        f"If the message needs no answer from you, reply with exactly {SKIP}.",
    ]
    if tools:
        parts.append(
            "Your tools change the room's shared state (polls, boards, shared values); "
            "everyone sees your tool calls."
        )
    if summary:
        parts.append("The room's shared state now:\n" + summary)
    return "\n\n".join(p for p in parts if p)


def build_request(
    agent: AgentConfig,
    channel: str,
    history: Sequence[Message],
    trigger: Message,
    chain: Sequence[Message],
    summary: str,
    tools: Sequence[ToolSpec],
    budget: int = CONTEXT_TOKENS,
) -> ProviderRequest:
    messages = select(history, trigger, chain, budget)
    return ProviderRequest(
        agent_name=agent.name,
        system_prompt=system_prompt(agent, channel, summary, bool(tools)),
        messages=tuple(as_turn(m) for m in messages),
        tools=tuple(tools),
        max_tokens=agent.max_tokens,
        temperature=agent.temperature,
    )


def reply_chain(
    trigger: Message, lookup: dict[int, Message], depth: int = REPLY_DEPTH
) -> list[Message]:
    """The messages the trigger replies to, nearest first (as far as ``lookup`` has them)."""
    chain: list[Message] = []
    current = trigger
    for _ in range(depth):
        target = reply_to(current)
        if target is None or target not in lookup:
            break
        current = lookup[target]
        chain.append(current)
    return chain


def shared_values(entries: dict[str, object], skip: frozenset[str]) -> dict[str, str]:
    """Plain (non-reference) values of the root map, as short JSON."""
    out: dict[str, str] = {}
    for key, value in entries.items():
        if key in skip or (isinstance(value, dict) and set(value) == {"object_id"}):
            continue
        out[key] = json.dumps(value, ensure_ascii=False)[:200]
    return out


__all__ = [
    "CONTEXT_TOKENS",
    "REPLY_DEPTH",
    "as_turn",
    "build_request",
    "estimate_tokens",
    "objects_summary",
    "reply_chain",
    "select",
    "shared_values",
    "system_prompt",
    "visible",
]
