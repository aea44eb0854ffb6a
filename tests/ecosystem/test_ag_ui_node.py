"""AG-UI's own client (`HttpAgent` of @ag-ui/client, pinned in ag_ui/package.json) against
a real server's `POST /v1/ag-ui`, with scripted agents: every stream passes the client's own
verification (inside `runAgent`), and what the client builds of it (its messages and its
state) is what the room holds: an agent's answer, two agents' answers, a tool call and the
live objects it made, a failed answer's RUN_ERROR, a stopped answer's cancelled outcome, an
aborted run resumed with the whole answer once, and another person's message and presence
arriving in a run. The scenarios are
in ag_ui/run.mjs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from node_scenarios import AG_UI, KEY, run_in

from ai_sdk_agents import BOT_ANSWER, CHEF_ANSWER, POLLSTER_ANSWER
from roomcast.server.ag_ui_events import PRESENCE
from roomcast.testing import ServerProcess

AUTH = {"Authorization": f"Bearer {KEY}"}


def scenario(name: str, server: ServerProcess) -> dict[str, Any]:
    """What run.mjs's scenario saw; no run threw and the client wrote no warning."""
    result = run_in(AG_UI, "run.mjs", name, server, ROOMCAST_KEY=KEY)
    assert result.pop("failures") == [], "runs the client refused or that threw"
    assert result.pop("warnings") == [], "what the client wrote to the console"
    return result


def history(server: ServerProcess, room: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{server.url}/v1/channels/room:{room}/messages", params={"limit": 1000}, headers=AUTH
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def room_objects(server: ServerProcess, room: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/v1/channels/room:{room}/objects", headers=AUTH)
    assert response.status_code == 200, response.text
    objects: dict[str, Any] = response.json()["objects"]
    return objects


def as_state(objects: dict[str, Any]) -> dict[str, Any]:
    """The room's objects (as GET .../objects gives them) in AG-UI's state form
    (docs/ag-ui.md): a map as its entries, a counter as its number."""
    return {
        object_id: state["entries"] if state["type"] == "map" else state["value"]
        for object_id, state in objects.items()
    }


def stored_answers(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The agents' text answers in the room's history."""
    return [m for m in items if m["name"] == "text" and "agent" in m["extras"]]


def as_built(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored answer as the AG-UI client holds it once its stream was applied."""
    name = stored["extras"]["agent"]["name"]
    return {"id": stored["id"], "role": "assistant", "content": stored["data"], "name": name}


def assistant(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["role"] == "assistant" and "toolCalls" not in m]


def of_type(run: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in run["events"] if e["type"] == kind]


def assert_one_run(run: dict[str, Any], room: str, end: str = "RUN_FINISHED") -> None:
    """One whole run on the room's thread: RUN_STARTED, STATE_SNAPSHOT, ..., ``end``."""
    assert run["resolved"], run.get("error")
    types = run["types"]
    assert types[:2] == ["RUN_STARTED", "STATE_SNAPSHOT"] and types[-1] == end, types
    assert types.count("RUN_STARTED") == 1, types
    assert run["events"][0]["threadId"] == room


def test_an_agents_answer_is_the_rooms(ag_ui_project: Path, chat_server: ServerProcess) -> None:
    result = scenario("bot", chat_server)
    room, run = result["room"], result["run"]
    assert_one_run(run, room)
    assert run["events"][-1]["runId"] == run["events"][0]["runId"]
    assert run["finished"] == "success"
    assert "MESSAGES_SNAPSHOT" not in run["types"]  # a new message: no resume
    items = history(chat_server, room)
    asked = items[0]
    assert (asked["id"], asked["client_id"], asked["data"]) == (
        result["asked"]["id"],
        "alice",
        "@bot where do we eat?",
    )
    [stored] = stored_answers(items)
    assert stored["data"] == BOT_ANSWER and stored["status"] == "complete"
    assert run["messages"] == [result["asked"], as_built(stored)]
    assert run["newMessages"] == [as_built(stored)]
    [start] = of_type(run, "TEXT_MESSAGE_START")
    assert start == {
        "type": "TEXT_MESSAGE_START",
        "messageId": stored["id"],
        "role": "assistant",
        "name": "bot",
    }
    deltas = [e["delta"] for e in of_type(run, "TEXT_MESSAGE_CONTENT")]
    assert "".join(deltas) == BOT_ANSWER


def test_an_aborted_run_then_a_resume_gives_the_whole_answer_once(
    ag_ui_project: Path, chat_server: ServerProcess
) -> None:
    result = scenario("resume", chat_server)
    room, asked = result["room"], result["asked"]
    aborted = result["aborted"]
    assert aborted["resolved"]  # runAgent takes an abort quietly...
    assert "TEXT_MESSAGE_CONTENT" in aborted["types"]
    assert "TEXT_MESSAGE_END" not in aborted["types"]  # cut short mid-answer...
    assert aborted["types"][-1] == "RUN_ERROR"
    assert aborted["events"][-1]["code"] == "abort"  # ...the client ends it with its own error
    [partial] = assistant(result["afterAbort"])
    assert result["afterAbort"][-1] == partial and partial["name"] == "slowbot"
    [stored] = stored_answers(history(chat_server, room))
    assert stored["status"] == "complete" and stored["data"].count("word") == 60
    assert len(partial["content"]) < len(stored["data"])
    # The aborted agent as it is (its last message the partial answer) and a fresh one.
    for resumed in (result["same"], result["fresh"]):
        assert_one_run(resumed, room)
        assert resumed["types"][2] == "MESSAGES_SNAPSHOT"
        [snapshot] = of_type(resumed, "MESSAGES_SNAPSHOT")
        asked_by_alice = {**asked, "name": "alice"}
        assert snapshot["messages"] == [asked_by_alice]  # the answer streams: not in it
        [start] = of_type(resumed, "TEXT_MESSAGE_START")
        assert (start["messageId"], start["name"]) == (stored["id"], "slowbot")
        deltas = [e["delta"] for e in of_type(resumed, "TEXT_MESSAGE_CONTENT")]
        assert "".join(deltas) == stored["data"]  # from its beginning
        assert resumed["messages"] == [asked_by_alice, as_built(stored)]


def test_a_tool_calls_live_objects_are_the_clients_state(
    ag_ui_project: Path, chat_server: ServerProcess
) -> None:
    result = scenario("pollster", chat_server)
    room, run = result["room"], result["run"]
    assert_one_run(run, room)
    [snapshot] = of_type(run, "STATE_SNAPSHOT")
    assert snapshot["snapshot"] == {"root": {}}
    deltas = of_type(run, "STATE_DELTA")
    assert deltas and all(op["op"] == "add" for e in deltas for op in e["delta"])
    objects = room_objects(chat_server, room)
    assert run["state"] == as_state(objects)  # the snapshot with every patch applied
    [start] = of_type(run, "TOOL_CALL_START")
    assert start["toolCallName"] == "create_poll"
    args = "".join(e["delta"] for e in of_type(run, "TOOL_CALL_ARGS"))
    assert json.loads(args) == {"question": "Lunch?", "options": ["pizza", "sushi"]}
    [outcome] = of_type(run, "TOOL_CALL_RESULT")
    poll = json.loads(outcome["content"])["poll_id"]
    assert objects[poll]["entries"]["question"] == "Lunch?"
    assert objects["root"]["entries"]["polls"]["object_id"] in objects
    items = history(chat_server, room)
    [stored] = stored_answers(items)
    assert stored["data"] == POLLSTER_ANSWER
    [tool] = [m for m in items if m["name"] == "tool"]
    call_id = f"tool-{tool['msg_serial']}"
    assert start["toolCallId"] == outcome["toolCallId"] == call_id
    assert assistant(run["messages"]) == [as_built(stored)]
    [called] = [m for m in run["messages"] if "toolCalls" in m]
    assert [c["function"]["name"] for c in called["toolCalls"]] == ["create_poll"]
    [answered] = [m for m in run["messages"] if m["role"] == "tool"]
    assert answered["toolCallId"] == call_id and answered["content"] == outcome["content"]


def test_two_agents_answer_in_one_run(ag_ui_project: Path, chat_server: ServerProcess) -> None:
    result = scenario("two", chat_server)
    room, run = result["room"], result["run"]
    assert_one_run(run, room)
    stored = stored_answers(history(chat_server, room))
    assert sorted(m["data"] for m in stored) == sorted([BOT_ANSWER, CHEF_ANSWER])
    built = assistant(run["messages"])
    assert sorted(built, key=lambda m: m["name"]) == sorted(
        (as_built(m) for m in stored), key=lambda m: m["name"]
    )
    assert {m["name"]: m["content"] for m in built} == {"bot": BOT_ANSWER, "chef": CHEF_ANSWER}
    starts = of_type(run, "TEXT_MESSAGE_START")
    assert sorted(e["name"] for e in starts) == ["bot", "chef"]
    assert len(of_type(run, "TEXT_MESSAGE_END")) == 2


def test_a_failed_answer_ends_the_run_with_run_error(
    ag_ui_project: Path, chat_server: ServerProcess
) -> None:
    result = scenario("broken", chat_server)
    room, run = result["room"], result["run"]
    assert_one_run(run, room, end="RUN_ERROR")
    # The pinned client hands RUN_ERROR to its subscribers and runAgent still resolves.
    assert run["resolved"] and "RUN_FINISHED" not in run["types"]
    assert run["finished"] is None
    [stored] = stored_answers(history(chat_server, room))
    assert stored["status"] == "failed"
    error = run["events"][-1]
    assert error["message"] == f"broken: {stored['extras']['failure']}"
    assert error["message"].startswith("broken: model 'gone-1' at ")
    [built] = assistant(run["messages"])
    assert (built["id"], built["name"]) == (stored["id"], "broken")
    assert run["types"][-2] == "TEXT_MESSAGE_END"  # the failed answer is closed first


def test_a_stopped_answer_ends_the_run_cancelled(
    ag_ui_project: Path, chat_server: ServerProcess
) -> None:
    result = scenario("stop", chat_server)
    room, run = result["room"], result["run"]
    stopped = result["stopped"]
    assert stopped["status"] == 200 and len(stopped["body"]["cancelled"]) == 1
    assert_one_run(run, room)
    assert run["events"][-1]["outcome"] == {"type": "cancelled"}
    assert run["finished"] == "cancelled"  # as the client reads it
    assert run["types"][-2] == "TEXT_MESSAGE_END"
    [stored] = stored_answers(history(chat_server, room))
    assert stored["status"] == "cancelled" and stored["cancelled_by"] == "alice"
    assert stored["data"].count("word") < 60
    assert assistant(run["messages"]) == [as_built(stored)]  # the text up to the stop


def test_another_persons_message_and_presence_arrive_in_a_run(
    ag_ui_project: Path, chat_server: ServerProcess
) -> None:
    result = scenario("group", chat_server)
    room, run = result["room"], result["run"]
    assert_one_run(run, room)
    enter, published, leave = result["bob"]
    assert [a["action"] for a in (enter, published, leave)] == ["ok", "ok", "ok"]
    bob_id = f"msg-{published['serial']}"  # published without an id
    events = run["events"]
    said = [
        i
        for i, e in enumerate(events)
        if e["type"] == "TEXT_MESSAGE_START" and e["messageId"] == bob_id
    ]
    assert len(said) == 1
    assert events[said[0]] == {
        "type": "TEXT_MESSAGE_START",
        "messageId": bob_id,
        "role": "user",
        "name": "bob",
    }
    presence = [
        (i, e["value"]["op"])
        for i, e in enumerate(events)
        if e["type"] == "CUSTOM" and e["name"] == PRESENCE and e["value"]["client_id"] == "bob"
    ]
    assert [op for _, op in presence] == ["enter", "leave"]
    assert presence[0][0] < said[0] < presence[1][0]
    assert events[presence[0][0]]["value"]["data"] == {"kind": "human"}
    bob = {"id": bob_id, "role": "user", "content": "I am in for lunch too", "name": "bob"}
    assert bob in run["messages"]
    items = history(chat_server, room)
    assert [(m["client_id"], m["data"]) for m in items if m["client_id"] == "bob"] == [
        ("bob", "I am in for lunch too")
    ]
    [stored] = stored_answers(items)
    assert assistant(run["messages"]) == [as_built(stored)]  # and the run read to its end
    assert stored["data"].count("word") == 60
