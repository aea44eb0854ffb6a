"""Capabilities (docs/protocol.md §6): which operations a client may do on which channels.

A capability is a JSON object of channel pattern → operations, as keys, tokens and the
anonymous default carry it. Parsing and checking one is pure, so the settings, the server
and tools that issue tokens share it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Literal

from roomcast.protocol.errors import BadRequest
from roomcast.protocol.patterns import pattern_covers, pattern_matches, validate_pattern

Operation = Literal[
    "subscribe",
    "publish",
    "presence",
    "history",
    "object-subscribe",
    "object-publish",
    "annotate",
    "signal",
    "claim",
    "cancel-own",
    "cancel-any",
    "update-own",
    "update-any",
    "delete-own",
    "delete-any",
    "agent-admin",
]
OPERATIONS: frozenset[str] = frozenset(Operation.__args__)  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=256)
def _parse_json(text: str) -> Capability:
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"a capability must be JSON: {exc}") from None
    return Capability._parse(raw)


def _grants(ops: frozenset[str], operation: str) -> bool:
    return operation in ops or (operation.endswith("-own") and operation[:-4] + "-any" in ops)


@dataclass(frozen=True, slots=True)
class Capability:
    """A map of channel pattern → operations, as in a token's ``capability`` claim."""

    rules: tuple[tuple[str, frozenset[str]], ...]
    # The operations each pattern lists by name (not through ``*``), for ``names``.
    named: tuple[tuple[str, frozenset[str]], ...] = ()

    @classmethod
    def parse(cls, text: str | dict[str, list[str]]) -> Capability:
        """Parse a capability; JSON text is parsed once and the result shared (it is frozen).

        Raises:
            BadRequest: Not a JSON object of pattern → list of known operations.
        """
        if isinstance(text, str):
            return _parse_json(text)
        return cls._parse(text)

    @classmethod
    def _parse(cls, raw: object) -> Capability:
        if not isinstance(raw, dict):
            raise BadRequest("a capability is a JSON object of pattern → [operations]")
        rules, named = [], []
        for pattern, ops in raw.items():
            if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
                raise BadRequest(f"capability {pattern!r}: operations must be a list of strings")
            validate_pattern(pattern)
            unknown = set(ops) - OPERATIONS - {"*"}
            if unknown:
                raise BadRequest(f"capability {pattern!r}: unknown operations {sorted(unknown)}")
            rules.append((pattern, frozenset(OPERATIONS if "*" in ops else ops)))
            named.append((pattern, frozenset(ops) - {"*"}))
        return cls(tuple(rules), tuple(named))

    def allows(self, operation: str, channel: str) -> bool:
        """Whether one rule grants ``operation`` on ``channel`` (``*-any`` grants ``*-own``)."""
        for pattern, ops in self.rules:
            if pattern_matches(pattern, channel) and _grants(ops, operation):
                return True
        return False

    def names(self, operation: str, channel: str) -> bool:
        """Whether a rule for ``channel`` lists ``operation`` by name: ``*`` grants it
        (:meth:`allows`), but does not name it."""
        return any(
            operation in ops and pattern_matches(pattern, channel) for pattern, ops in self.named
        )

    def covers(self, other: Capability) -> bool:
        """Whether ``other`` grants nothing beyond this capability: each (pattern,
        operation) of ``other`` is granted by one rule here whose pattern covers it whole."""
        return all(
            any(
                pattern_covers(mine, pattern) and _grants(my_ops, op) for mine, my_ops in self.rules
            )
            for pattern, ops in other.rules
            for op in ops
        )

    def to_json(self) -> dict[str, list[str]]:
        """The JSON form (as in a token's claim): ``*`` where it was given, and the
        operations named, so that parsing it gives this capability again."""
        named = dict(self.named)
        return {
            pattern: (["*"] if len(named.get(pattern, ops)) < len(ops) else [])
            + sorted(named.get(pattern, ops))
            for pattern, ops in self.rules
        }


ALL = Capability.parse({"*": ["*"]})
"""Everything: the capability of a key configured without one."""

AGENT_CLAIM_PREFIXES = ("answer:",)
"""Claim keys that only API-key holders (the agents among them) may claim: the agent
runtime claims ``answer:NAME:MSG_SERIAL`` before it answers a message."""

__all__ = ["AGENT_CLAIM_PREFIXES", "ALL", "OPERATIONS", "Capability", "Operation"]
