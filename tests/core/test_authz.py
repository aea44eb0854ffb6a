"""§6 capabilities: whole-segment patterns, own/any, and the anonymous default."""

from __future__ import annotations

import pytest

from roomcast.core.authz import OPERATIONS, Capability, Principal, authorize, pattern_matches
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


def test_claims_under_answer_are_for_key_holders_and_others_need_claim_by_name() -> None:
    from roomcast.core.authz import authorize_claim

    default = Capability.parse(DEFAULT_ANONYMOUS_CAPABILITY)
    everything = Capability.parse({"*": ["*"]})
    named = Capability.parse({"room:*": ["subscribe", "claim"], "*": ["*"]})
    # The default anonymous capability has no claim.
    with pytest.raises(Forbidden):
        authorize_claim(Principal("mallory", default), "room:a", "lock:1")
    # `*` is not naming it: an anonymous or token caller needs `claim` written out.
    for kind in ("anonymous", "token"):
        with pytest.raises(Forbidden, match="by name"):
            authorize_claim(Principal("mallory", everything, kind), "room:a", "lock:1")
        authorize_claim(Principal("worker", named, kind), "room:a", "lock:1")
        with pytest.raises(Forbidden, match="answer:"):
            authorize_claim(Principal("worker", named, kind), "room:a", "answer:assistant:1")
        with pytest.raises(Forbidden):  # named for room:*, not for this channel
            authorize_claim(Principal("worker", named, kind), "lobby", "lock:1")
    # Key holders (the agents among them) claim anything their capability allows.
    authorize_claim(Principal("assistant", everything, "key"), "room:a", "answer:assistant:1")
    with pytest.raises(Forbidden):
        authorize_claim(
            Principal("key:r", Capability.parse({"room:*": ["subscribe"]}), "key"),
            "room:a",
            "answer:x:1",
        )


def test_a_capability_keeps_what_it_names_through_a_token() -> None:
    named = Capability.parse({"room:*": ["subscribe", "claim"], "*": ["*"]})
    assert Capability.parse(named.to_json()) == named
    assert named.names("claim", "room:a") and not named.names("claim", "lobby")
    every = Capability.parse({"*": sorted(OPERATIONS)})  # all of them, each by name
    assert every.names("claim", "x") and Capability.parse(every.to_json()) == every
    assert Capability.parse({"*": ["*"]}).to_json() == {"*": ["*"]}
