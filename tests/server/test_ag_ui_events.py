"""RunEvents and snapshot_messages without a server: what a room's messages become in AG-UI."""

from __future__ import annotations

import json
from typing import Any

from ag_ui.core import Event
from pydantic import TypeAdapter

from roomcast.protocol.messages import Event as RoomEvent
from roomcast.protocol.messages import Message, ObjectState, PresenceEvent
from roomcast.server.ag_ui_events import RunEvents, snapshot_messages

CHANNEL = "room:t"
EVENTS = TypeAdapter(list[Event])


def message(serial: int, name: str, data: Any, **extras: Any) -> Message:
    return Message(
        msg_serial=serial,
        id=None,
        client_id=extras.pop("client_id", "alice"),
        name=name,
        data=data,
        extras=extras,
        timestamp=0,
        updated_at=0,
        status=extras.pop("status", "complete"),
    )


def decoded(body: bytes) -> list[dict[str, Any]]:
    """The events of a body, checked against AG-UI's types."""
    events = [json.loads(line[6:]) for line in body.decode().splitlines() if line]
    EVENTS.validate_python(events)
    return events


def run_events(**kw: Any) -> RunEvents:
    base: dict[str, Any] = {
        "channel": CHANNEL,
        "thread_id": "t",
        "run_id": "r",
        "asked": (1, None),
        "expected": ["bot"],
        "objects": {},
        "state_serial": 1,
    }
    return RunEvents(**{**base, **kw})


def test_a_snapshot_names_people_and_agents_and_splits_a_tool_call_from_its_result() -> None:
    agent = {"name": "bot", "provider": "scripted", "depth": 1}
    history = [
        message(1, "text", "@bot poll?"),
        message(
            2,
            "tool",
            {"tool": "create_poll", "arguments": {"q": "?"}, "result": "ok"},
            client_id="bot",
            agent=agent,
            reply_to=1,
        ),
        message(3, "text", "Done.", client_id="bot", agent=agent, reply_to=1),
        message(4, "agent.silent", None, client_id="chef", agent={"name": "chef"}, reply_to=1),
    ]
    got = [m.model_dump(by_alias=True, exclude_none=True) for m in snapshot_messages(history)]
    assert got == [
        {"id": "msg-1", "role": "user", "name": "alice", "content": "@bot poll?"},
        {
            "id": "tool-2",
            "role": "assistant",
            "name": "bot",
            "toolCalls": [
                {
                    "id": "tool-2",
                    "type": "function",
                    "function": {"name": "create_poll", "arguments": '{"q": "?"}'},
                }
            ],
        },
        {"id": "result-2", "role": "tool", "toolCallId": "tool-2", "content": "ok"},
        {"id": "msg-3", "role": "assistant", "name": "bot", "content": "Done."},
    ]


def test_a_change_replaces_the_object_once_past_the_snapshot() -> None:
    objects = {"root": ObjectState(type="map", entries={})}
    run = run_events(objects=objects, state_serial=5)
    op = {"type": "map.set", "object_id": "root", "key": "lunch", "value": 1}
    old = RoomEvent(channel=CHANNEL, serial=5, type="object", client_id="x", timestamp=0, op=op)
    assert run.feed(old) == b""  # in the snapshot already
    new = RoomEvent(channel=CHANNEL, serial=6, type="object", client_id="x", timestamp=0, op=op)
    [delta] = decoded(run.feed(new))
    assert delta["delta"] == [{"op": "add", "path": "/root", "value": {"lunch": 1}}]


def test_presence_is_a_custom_event_and_the_run_waits_for_its_agent() -> None:
    run = run_events()
    presence = PresenceEvent(
        channel=CHANNEL, op="enter", client_id="bob", connection_id="c", data={"x": 1}, timestamp=0
    )
    [custom] = decoded(run.feed(presence))
    assert custom == {
        "type": "CUSTOM",
        "name": "roomcast.presence",
        "value": {"op": "enter", "client_id": "bob", "data": {"x": 1}},
    }
    assert not run.done and run.waiting == {"bot"}
    silent = RoomEvent(
        channel=CHANNEL,
        serial=3,
        type="create",
        msg_serial=3,
        client_id="bot",
        timestamp=0,
        name="agent.silent",
        data=None,
        extras={"agent": {"name": "bot"}, "reply_to": 1},
    )
    assert run.feed(silent) == b""
    assert run.done
    assert [e["type"] for e in decoded(run.finish())] == ["RUN_FINISHED"]
