"""Capabilities and the one authorization function every operation goes through (§6)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Literal

from roomcast.protocol.errors import BadRequest, Forbidden

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


def pattern_matches(pattern: str, channel: str) -> bool:
    """Whole ``:`` segments; a final ``*`` matches one or more segments; ``*`` alone, all."""
    if pattern == "*":
        return True
    if pattern.endswith(":*"):
        prefix = pattern[:-1]  # keeps the trailing ':'
        return channel.startswith(prefix) and len(channel) > len(prefix)
    return pattern == channel


def pattern_covers(outer: str, inner: str) -> bool:
    """Whether every channel ``inner`` matches is matched by ``outer`` (§6: a token's
    patterns must each lie inside one of its key's)."""
    if outer == "*":
        return True
    if inner == "*":
        return False
    if outer.endswith(":*"):
        prefix = outer[:-1]  # keeps the trailing ':'
        return inner.startswith(prefix) and len(inner) > len(prefix)
    return outer == inner


def _grants(ops: frozenset[str], operation: str) -> bool:
    return operation in ops or (operation.endswith("-own") and operation[:-4] + "-any" in ops)


def validate_pattern(pattern: str) -> None:
    if "*" in pattern[:-1] or (
        pattern.endswith("*") and pattern not in ("*",) and not pattern.endswith(":*")
    ):
        raise BadRequest(f"capability pattern {pattern!r}: `*` may only stand as a last segment")


@dataclass(frozen=True, slots=True)
class Capability:
    """A map of channel pattern → operations, as in a token's ``capability`` claim."""

    rules: tuple[tuple[str, frozenset[str]], ...]

    @classmethod
    def parse(cls, text: str | dict[str, list[str]]) -> Capability:
        """Parse a capability; JSON text is parsed once and the result shared (it is frozen)."""
        if isinstance(text, str):
            return _parse_json(text)
        return cls._parse(text)

    @classmethod
    def _parse(cls, raw: object) -> Capability:
        if not isinstance(raw, dict):
            raise BadRequest("a capability is a JSON object of pattern → [operations]")
        rules = []
        for pattern, ops in raw.items():
            if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
                raise BadRequest(f"capability {pattern!r}: operations must be a list of strings")
            validate_pattern(pattern)
            unknown = set(ops) - OPERATIONS - {"*"}
            if unknown:
                raise BadRequest(f"capability {pattern!r}: unknown operations {sorted(unknown)}")
            rules.append((pattern, frozenset(OPERATIONS if "*" in ops else ops)))
        return cls(tuple(rules))

    def allows(self, operation: str, channel: str) -> bool:
        for pattern, ops in self.rules:
            if pattern_matches(pattern, channel) and _grants(ops, operation):
                return True
        return False

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
        """The JSON form (as in a token's claim); every operation is written ``*``."""
        return {pattern: ["*"] if ops == OPERATIONS else sorted(ops) for pattern, ops in self.rules}


ALL = Capability.parse({"*": ["*"]})
"""Everything: the capability of a key configured without one."""


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
