"""What an agent reads: history within a budget, the reply chain, the room's shared state."""

from __future__ import annotations

from room_messages import message

from roomcast.agents.config import AgentConfig
from roomcast.agents.context import build_request, objects_summary, reply_chain, select
from roomcast.agents.providers.base import ToolSpec, Turn
from roomcast.client import Board, BoardItem, Poll

AGENT = AgentConfig(name="helper", provider="scripted", model="scripted", system_prompt="Be kind.")


def test_speakers_order_and_the_agents_own_turns() -> None:
    history = [
        message("hi all", serial=1),
        message("hello", serial=2, by="bob"),
        message("Hi! How can I help?", serial=3, by="helper", extras={"agent": {"depth": 1}}),
        message("@helper pick a place", serial=4),
    ]
    request = build_request(AGENT, "room:lunch", history, history[-1], [], "", [])
    assert request.messages == (
        Turn("alice", "hi all"),
        Turn("bob", "hello"),
        Turn("helper", "Hi! How can I help?"),
        Turn("alice", "@helper pick a place"),
    )
    assert request.agent_name == "helper"
    assert request.system_prompt.startswith("Be kind.")
    assert "room:lunch" in request.system_prompt and "[skip]" in request.system_prompt


def test_deleted_streaming_and_later_messages_are_left_out() -> None:
    history = [
        message("gone", serial=1, deleted=True),
        message("half", serial=2, status="streaming"),
        message("@helper now", serial=3),
        message("after the trigger", serial=4),
        message({"vote": "yes"}, serial=5, name="vote"),
    ]
    chosen = select(history, history[2], [], 1000)
    assert [m.msg_serial for m in chosen] == [3]


def test_the_budget_keeps_the_newest_and_the_reply_chain() -> None:
    history = [message(f"message number {i} " * 20, serial=i) for i in range(1, 40)]
    trigger = message("@helper about #2", serial=40, extras={"reply_to": 2})
    lookup = {m.msg_serial: m for m in history}
    chain = reply_chain(trigger, lookup)
    assert [m.msg_serial for m in chain] == [2]
    chosen = select(history, trigger, chain, budget=600)
    serials = [m.msg_serial for m in chosen]
    assert serials[0] == 2 and serials[-1] == 40  # the chain, then the newest
    assert 3 < len(serials) < 20
    assert serials == sorted(serials)


def test_the_objects_summary_names_polls_boards_and_values() -> None:
    poll = Poll("map-3", "Lunch?", {"opt-1": "Tacos", "opt-2": "Ramen"}, {"bob": "opt-2"},
                False, "alice")  # fmt: skip
    board = Board("map-7", "Garden", [BoardItem("1-a", "tomatoes", "bob", 1, True)])
    summary = objects_summary([poll], [board], {"score": "3"})
    assert "poll map-3 (open) 'Lunch?': opt-1 'Tacos': 0, opt-2 'Ramen': 1" in summary
    assert "board map-7 'Garden': [x] tomatoes" in summary
    assert "shared score = 3" in summary
    request = build_request(
        AGENT, "room:x", [], message("hi", serial=1), [], summary, [ToolSpec("vote", "")]
    )
    assert "shared state now" in request.system_prompt and request.tools[0].name == "vote"
