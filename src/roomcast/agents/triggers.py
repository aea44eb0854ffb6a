"""When an agent speaks: the answer policies and the loop guards (docs/agents.md).

Pure functions and small counters, no I/O: the runtime asks them about each finished
message of a room.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from roomcast.protocol.messages import Message

SKIP = "[skip]"
"""An answer that is exactly this (or empty) means: stay silent."""


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


class RateWindow:
    """At most ``limit`` events per ``window_s`` seconds (a sliding window)."""

    def __init__(self, limit: int, window_s: float = 60.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: deque[float] = deque()

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        while self._times and now - self._times[0] >= self.window_s:
            self._times.popleft()
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True


def parse_judgement(text: str) -> tuple[bool, str]:
    """The `auto` judge's verdict: ``YES``/``NO`` first, then a reason."""
    cleaned = text.strip()
    verdict = re.match(r"\W*(yes|no)\b[\s:.,-]*(.*)", cleaned, re.IGNORECASE | re.S)
    if verdict is None:
        return False, f"unclear verdict {cleaned[:80]!r}"
    return verdict.group(1).lower() == "yes", verdict.group(2).strip()[:200] or "no reason"


__all__ = [
    "SKIP",
    "Decision",
    "RateWindow",
    "agent_info",
    "consider",
    "depth_of",
    "mentions",
    "message_text",
    "parse_judgement",
    "reply_to",
]
