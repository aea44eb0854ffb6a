"""Who answers a message: the rules an agent runtime and the server share (docs/agents.md).

An agent decides per finished message whether to answer it (:func:`consider`); the
server's AI SDK chat stream asks the same question before it publishes a message, to know
which answers to wait for (:func:`expected_agents`). Both read the rule here, so they
cannot disagree on it. What the rule cannot know beforehand (the ``auto`` judge, an empty
or ``[skip]`` answer, a rate cap) the runtime states in the room with a marker message
(:data:`SILENT`) whenever the message named it in ``extras.awaits``.

Pure functions, no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .messages import Message, ObjectsSnapshot
from .objects import AGENTS_KEY, ROOT, reference
from .patterns import pattern_matches

AWAITS = "awaits"
"""``extras.awaits`` of a message: the agents its sender waits for (a list of names). An
agent it names that decides not to answer says so with a :data:`SILENT` marker."""

SILENT = "agent.silent"
"""The ``name`` of the marker an agent publishes when it stays silent on a message that
awaits it: ``data`` is the reason, ``extras`` are an answer's (``reply_to``, ``agent``, and
``regenerate`` when it was asked again)."""

REGENERATE = "agent.regenerate"
"""The server's signal (``client_id`` null) that asks agents to answer a message again:
``data`` is ``{reply_to, agents, regenerate}``."""

REGENERATE_KEY = "regenerate"
"""``extras.regenerate`` of an answer made because it was asked again: the request's id."""

DEFAULT_MAX_CHAIN_DEPTH = 3
"""The chain depth cap of an agent whose own cap is not known (agents.md)."""


class AgentRule(Protocol):
    """What the rule reads of an agent (``AgentInfo`` and ``AgentConfig`` both have it)."""

    @property
    def name(self) -> str: ...

    @property
    def policy(self) -> str: ...

    @property
    def rooms(self) -> Sequence[str]: ...


def message_text(message: Message) -> str:
    """The text of a message as the agents read it (JSON data is shown as JSON)."""
    data = message.data
    if isinstance(data, str):
        return data
    if data is None:
        return ""
    return json.dumps(data, ensure_ascii=False)


def mentions(text: str, name: str) -> bool:
    """Whether ``text`` names the agent: ``@name`` or ``name`` as a whole word, any case."""
    pattern = rf"(?<![A-Za-z0-9_.@-])@?{re.escape(name)}(?![A-Za-z0-9_-])"
    return re.search(pattern, text, re.IGNORECASE) is not None


def agent_info(message: Message) -> dict[str, Any] | None:
    """``extras.agent`` of an agent's answer ({provider, model, depth, name}), else None."""
    info = message.extras.get("agent")
    return info if isinstance(info, dict) else None


def depth_of(message: Message) -> int:
    """A person's message has depth 0; an answer has its trigger's depth + 1."""
    info = agent_info(message)
    depth = info.get("depth") if info is not None else None
    return depth if isinstance(depth, int) and not isinstance(depth, bool) else 0


def reply_to(message: Message) -> int | None:
    target = message.extras.get("reply_to")
    if isinstance(target, int) and not isinstance(target, bool):
        return target
    return None


def awaits(message: Message) -> list[str]:
    """The agents ``message`` waits for (``extras.awaits``)."""
    names = message.extras.get(AWAITS)
    if not isinstance(names, list):
        return []
    return [name for name in names if isinstance(name, str)]


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether an agent should consider answering a message, and why not if it should not."""

    answer: bool
    reason: str
    needs_judge: bool = False  # the `auto` policy: a model call decides after the claim


def consider(
    *,
    name: str,
    policy: str,
    message: Message,
    max_chain_depth: int,
    agent_names: frozenset[str],
) -> Decision:
    """The rules that need no model call and no shared state, in order."""
    if message.client_id == name:
        return Decision(False, "its own message")
    if message.deleted or message.status != "complete":
        return Decision(False, f"the message is {message.status}")
    if message.name != "text":
        return Decision(False, f"a {message.name!r} message, not text")
    depth = depth_of(message)
    if depth >= max_chain_depth:
        return Decision(False, f"chain depth {depth} reached the cap {max_chain_depth}")
    text = message_text(message)
    if not text.strip():
        return Decision(False, "empty text")
    named = mentions(text, name)
    if policy == "mention":
        return Decision(named, "mentioned" if named else "not mentioned")
    if policy == "always":
        return Decision(True, "policy always")
    # auto: a direct mention needs no judge
    if named:
        return Decision(True, "mentioned")
    others = [n for n in agent_names if n != name and mentions(text, n)]
    if others:
        return Decision(False, f"addressed to {', '.join(sorted(others))}")
    return Decision(True, "policy auto", needs_judge=True)


def room_agents(snapshot: ObjectsSnapshot) -> frozenset[str] | None:
    """The names in a room's ``root.agents`` (protocol.md §5), or None while the room has
    no such list (then every agent whose ``rooms`` match is in)."""
    root = snapshot.objects.get(ROOT)
    if root is None or not isinstance(root.entries, dict):
        return None
    target = reference(root.entries.get(AGENTS_KEY))
    listed = snapshot.objects.get(target) if target is not None else None
    if listed is None or not isinstance(listed.entries, dict):
        return None
    return frozenset(listed.entries)


def expected_agents(
    agents: Iterable[AgentRule],
    channel: str,
    message: Message,
    listed: frozenset[str] | None,
) -> list[str]:
    """The agents that answer ``message`` on ``channel`` or, deciding with a model call,
    say that they stay silent: those whose ``rooms`` match, that the room lists (``listed``,
    from :func:`room_agents`), and that :func:`consider` does not rule out."""
    agents = list(agents)
    names = frozenset(agent.name for agent in agents)
    out = []
    for agent in agents:
        if not any(pattern_matches(p, channel) for p in agent.rooms):
            continue
        if listed is not None and agent.name not in listed:
            continue
        decision = consider(
            name=agent.name,
            policy=agent.policy,
            message=message,
            max_chain_depth=DEFAULT_MAX_CHAIN_DEPTH,
            agent_names=names,
        )
        if decision.answer:
            out.append(agent.name)
    return out


__all__ = [
    "AWAITS",
    "DEFAULT_MAX_CHAIN_DEPTH",
    "REGENERATE",
    "REGENERATE_KEY",
    "SILENT",
    "AgentRule",
    "Decision",
    "agent_info",
    "awaits",
    "consider",
    "depth_of",
    "expected_agents",
    "mentions",
    "message_text",
    "reply_to",
    "room_agents",
]
