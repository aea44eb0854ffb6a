"""Who is asking, and the one authorization function every operation goes through (§6).

Capabilities and channel patterns are protocol values (``protocol/capabilities.py``,
``protocol/patterns.py``); they are re-exported here for the server and core code that
imports them with the principal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from roomcast.protocol.capabilities import (
    AGENT_CLAIM_PREFIXES,
    ALL,
    OPERATIONS,
    Capability,
    Operation,
)
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


def authorize_claim(principal: Principal, channel: str, key: str) -> None:
    """Raise :class:`Forbidden` unless ``principal`` may claim ``key`` on ``channel``.

    Claims decide which worker answers a message, so they are not for just anyone: an
    anonymous or token caller needs ``claim`` named in its capability for the channel (``*``
    is not enough), and the agents' own claims (``answer:``...) are for API-key holders
    only, which the agents are. Else one client could hold every answer of a room.
    """
    authorize(principal, "claim", channel)
    if principal.kind == "key":
        return
    if key.startswith(AGENT_CLAIM_PREFIXES):
        prefixes = ", ".join(AGENT_CLAIM_PREFIXES)
        raise Forbidden(f"claims under {prefixes} are for the agents (API-key holders) only")
    if not principal.capability.names("claim", channel):
        raise Forbidden(
            f"a {principal.kind} caller may claim on {channel!r} only if its "
            "capability names `claim` by name"
        )


__all__ = [
    "AGENT_CLAIM_PREFIXES",
    "ALL",
    "OPERATIONS",
    "Capability",
    "Operation",
    "Principal",
    "authorize",
    "authorize_claim",
    "pattern_covers",
    "pattern_matches",
    "validate_pattern",
]
