"""§6 capabilities: whole-segment patterns, own/any, and the anonymous default."""

from __future__ import annotations

import pytest

from roomcast.core.authz import Capability, Principal, authorize, pattern_matches
from roomcast.protocol.errors import BadRequest, Forbidden
from roomcast.settings import DEFAULT_ANONYMOUS_CAPABILITY


@pytest.mark.parametrize(
    ("pattern", "channel", "expected"),
    [
        ("room:*", "room:a", True),
        ("room:*", "room:a:b", True),
        ("room:*", "room", False),
        ("room:*", "roomy:a", False),
        ("*", "anything:at:all", True),
        ("room:a", "room:a", True),
        ("room:a", "room:ab", False),
    ],
)
def test_patterns_match_whole_segments(pattern: str, channel: str, expected: bool) -> None:
    assert pattern_matches(pattern, channel) is expected


def test_any_implies_own_but_not_the_reverse() -> None:
    cap = Capability.parse({"room:*": ["update-any", "delete-own"]})
    assert cap.allows("update-own", "room:a")
    assert cap.allows("delete-own", "room:a")
    assert not cap.allows("delete-any", "room:a")
    assert not cap.allows("update-own", "other:a")


def test_anonymous_default_allows_all_but_the_any_operations() -> None:
    anon = Principal("alice", Capability.parse(DEFAULT_ANONYMOUS_CAPABILITY))
    authorize(anon, "publish", "room:lunch")
    authorize(anon, "delete-own", "room:lunch")
    with pytest.raises(Forbidden) as caught:
        authorize(anon, "delete-any", "room:lunch")
    assert caught.value.code == 40300


@pytest.mark.parametrize(
    "raw", ['["publish"]', '{"room:*": "publish"}', '{"room:*": ["fly"]}', '{"ro*m": ["publish"]}']
)
def test_malformed_capabilities_are_refused(raw: str) -> None:
    with pytest.raises(BadRequest):
        Capability.parse(raw)
