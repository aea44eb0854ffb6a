"""When an agent answers: policies, depth cap, the rate window and the judge's verdict."""

from __future__ import annotations

import pytest
from room_messages import message

from roomcast.agents.triggers import (
    Decision,
    RateWindow,
    consider,
    depth_of,
    mentions,
    parse_judgement,
)
from roomcast.protocol.messages import Message


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("@helper pick a place", True),
        ("helper, pick a place", True),
        ("what do you think HELPER?", True),
        ("ask @Helper.", True),
        ("helpers are nice", False),
        ("the-helper-bot", False),
        ("email me at x@helper.com", False),
        ("", False),
    ],
)
def test_mentions(text: str, named: bool) -> None:
    assert mentions(text, "helper") is named


NAMES = frozenset({"helper", "critic"})


def decide(policy: str, msg: Message, names: frozenset[str] = NAMES) -> Decision:
    return consider(name="helper", policy=policy, message=msg, max_chain_depth=3, agent_names=names)


def test_mention_policy_answers_only_when_named() -> None:
    assert decide("mention", message("@helper hi")).answer
    assert not decide("mention", message("hi all")).answer


def test_always_answers_everything_but_its_own() -> None:
    assert decide("always", message("hi all")).answer
    own = decide("always", message("hi", by="helper"))
    assert not own.answer and own.reason == "its own message"


def test_auto_needs_the_judge_unless_named_or_addressed_elsewhere() -> None:
    assert decide("auto", message("hi all")).needs_judge
    named = decide("auto", message("@helper hi"))
    assert named.answer and not named.needs_judge
    other = decide("auto", message("@critic what now?"))
    assert not other.answer and "critic" in other.reason


def test_unfinished_deleted_tool_and_empty_messages_are_not_triggers() -> None:
    assert not decide("always", message(status="streaming")).answer
    assert not decide("always", message(deleted=True)).answer
    assert not decide("always", message(name="tool")).answer
    assert not decide("always", message("   ")).answer


def test_depth_cap() -> None:
    answer = message("@helper more", by="critic", extras={"agent": {"depth": 2}})
    assert depth_of(answer) == 2 and decide("always", answer).answer
    capped = message("@helper more", by="critic", extras={"agent": {"depth": 3}})
    decision = decide("always", capped)
    assert not decision.answer and "cap" in decision.reason
    assert depth_of(message()) == 0


def test_rate_window() -> None:
    window = RateWindow(2, 60)
    assert window.take(0) and window.take(1) and not window.take(2)
    assert window.take(61)


@pytest.mark.parametrize(
    ("text", "verdict"),
    [("YES - they asked for a recommendation", True), ("no. people are chatting", False),
     ("Yes", True), ("maybe", False)],
)  # fmt: skip
def test_parse_judgement(text: str, verdict: bool) -> None:
    assert parse_judgement(text)[0] is verdict
