"""When an agent speaks: the answer policies and the loop guards (docs/agents.md).

Pure functions and small counters, no I/O: the runtime asks them about each finished
message of a room. The policies themselves are in :mod:`roomcast.protocol.answering`,
which the server reads too (to know which answers a message waits for).
"""

from __future__ import annotations

import re
import time
from collections import deque

from roomcast.protocol.answering import (
    Decision,
    agent_info,
    consider,
    depth_of,
    mentions,
    message_text,
    reply_to,
)

SKIP = "[skip]"
"""An answer that is exactly this (or empty) means: stay silent."""


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
