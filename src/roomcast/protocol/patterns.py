"""Channel patterns (docs/protocol.md §6): whole ``:`` segments, with ``*`` only as the last.

A capability names its channels with these patterns, and agents name their rooms with
them, so the server, the SDK's users and the agents match channels the same way.
"""

from __future__ import annotations

from roomcast.protocol.errors import BadRequest


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
    return pattern_matches(outer, inner)


def validate_pattern(pattern: str) -> None:
    """Raise :class:`BadRequest` unless ``*`` stands only as a whole last segment."""
    if "*" in pattern[:-1] or (
        pattern.endswith("*") and pattern not in ("*",) and not pattern.endswith(":*")
    ):
        raise BadRequest(f"capability pattern {pattern!r}: `*` may only stand as a last segment")


__all__ = ["pattern_covers", "pattern_matches", "validate_pattern"]
