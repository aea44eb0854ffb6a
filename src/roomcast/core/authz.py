"""Who is asking, and the one authorization function every operation goes through (§6).

Capabilities and channel patterns are protocol values (``protocol/capabilities.py``,
``protocol/patterns.py``); they are re-exported here for the server and core code that
imports them with the principal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from roomcast.protocol.capabilities import ALL, OPERATIONS, Capability, Operation
from roomcast.protocol.errors import Forbidden
from roomcast.protocol.patterns import pattern_covers, pattern_matches, validate_pattern


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a client id and what it may do."""

    client_id: str
    capability: Capability
    kind: Literal["anonymous", "key", "token"] = "anonymous"


def authorize(principal: Principal, operation: Operation, channel: str) -> None:
    """Raise :class:`Forbidden` unless ``principal`` may do ``operation`` on ``channel``."""
    if not principal.capability.allows(operation, channel):
        raise Forbidden(f"{operation!r} on {channel!r} is not allowed for {principal.client_id!r}")


__all__ = [
    "ALL",
    "OPERATIONS",
    "Capability",
    "Operation",
    "Principal",
    "authorize",
    "pattern_covers",
    "pattern_matches",
    "validate_pattern",
]
