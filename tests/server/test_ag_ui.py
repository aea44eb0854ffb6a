"""POST /v1/ag-ui (docs/ag-ui.md) against a real server with scripted agents: every event
checked against AG-UI's own types, the answers, tool calls, live objects, presence and
other people's messages of a run, stop, resume, and bodies that are refused with 400."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import msgspec
import pytest
from ag_ui.core import Event
from pydantic import TypeAdapter

from ai_sdk_agents import (
    BOT_ANSWER,
    CHEF_ANSWER,
    SLEEPY_ANSWER,
    chat_server_process,
    sleepy_server_process,
)
from roomcast.protocol.messages import ObjectState
from roomcast.protocol.objects import plain_state
from roomcast.testing import ServerProcess

KEY = "app:" + "g" * 32
ALICE = {"X-Roomcast-Client-Id": "alice"}
BOB = {"X-Roomcast-Client-Id": "bob"}
EVENT = TypeAdapter(Event)


@pytest.fixture(scope="module")
def agui_server(
    tmp_path_factory: pytest.TempPathFactory, test_env: dict[str, str]
) -> Iterator[ServerProcess]:
    with chat_server_process(tmp_path_factory.mktemp("ag-ui-agents"), test_env, KEY) as server:
        yield server


@pytest.fixture
def http(agui_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=agui_server.url, timeout=30) as client:
        yield client


def thread() -> str:
    return "agui-" + uuid.uuid4().hex[:8]


def run_input(thread_id: str, *messages: dict[str, Any]) -> dict[str, Any]:
    return {
        "threadId": thread_id,
        "runId": uuid.uuid4().hex,
        "messages": list(messages),
        "tools": [],
        "context": [],
        "state": {},
        "forwardedProps": {},
    }


def user(text: str, message_id: str | None = None) -> dict[str, Any]:
    return {"id": message_id or uuid.uuid4().hex, "role": "user", "content": text}


def events_of(lines: Iterator[str], until: str | None = None) -> list[dict[str, Any]]:
    """The events of a stream, each checked against AG-UI's types, to its end (or to the
    first event of type ``until``)."""
    out: list[dict[str, Any]] = []
    for line in lines:
        if not line.startswith("data: "):
            assert line == "" or line.startswith(":"), line  # blank lines and keep-alives
            continue
        event = json.loads(line[len("data: ") :])
        EVENT.validate_python(event)
        out.append(event)
        if event["type"] in ("RUN_FINISHED", "RUN_ERROR") or event["type"] == until:
            break
    return out


def run(http: httpx.Client, payload: Any, headers: dict[str, str] = ALICE) -> list[dict[str, Any]]:
    with http.stream("POST", "/v1/ag-ui", json=payload, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "text/event-stream"
        return events_of(response.iter_lines())


@contextmanager
def streaming(http: httpx.Client, room: str, text: str) -> Iterator[Iterator[str]]:
    """The lines of a run that alice starts in ``room`` by saying ``text``, as they come."""
    payload = run_input(room, user(text))
    with http.stream("POST", "/v1/ag-ui", json=payload, headers=ALICE) as response:
        assert response.status_code == 200, response.read()
        yield response.iter_lines()


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def texts(events: list[dict[str, Any]]) -> dict[str, tuple[str, str, str]]:
    """Each text message of the events: id → (role, name, the text its deltas make)."""
    out: dict[str, tuple[str, str, str]] = {}
    for event in events:
        if event["type"] == "TEXT_MESSAGE_START":
            out[event["messageId"]] = (event["role"], event["name"], "")
        elif event["type"] == "TEXT_MESSAGE_CONTENT":
            role, name, text = out[event["messageId"]]
            out[event["messageId"]] = (role, name, text + event["delta"])
    return out


def history(http: httpx.Client, thread_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = http.get(f"/v1/channels/room:{thread_id}/messages").json()[
        "items"
    ]
    return items


def answers(http: httpx.Client, thread_id: str) -> list[dict[str, Any]]:
    return [m for m in history(http, thread_id) if m["extras"].get("agent") and m["name"] == "text"]


def apply_patch(state: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 ``add``/``replace`` at the top level, the operations the server sends."""
    out = dict(state)
    for op in patch:
        assert op["op"] in ("add", "replace"), op
        key = op["path"][1:].replace("~1", "/").replace("~0", "~")
        out[key] = op["value"]
    return out


def test_a_run_publishes_the_message_and_streams_the_answer(http: httpx.Client) -> None:
    room = thread()
    asked = user("@bot lunch?")
    events = run(http, run_input(room, asked))
    assert types(events)[:2] == ["RUN_STARTED", "STATE_SNAPSHOT"]
    assert events[0]["threadId"] == room
    assert events[-1]["type"] == "RUN_FINISHED"
    [(role, name, text)] = texts(events).values()
    assert (role, name, text) == ("assistant", "bot", BOT_ANSWER)
    stored = history(http, room)
    assert [(m["client_id"], m["id"], m["data"]) for m in stored[:1]] == [
        ("alice", asked["id"], "@bot lunch?")
    ]
    [answer] = answers(http, room)
    assert answer["data"] == text and answer["status"] == "complete"
    assert list(texts(events)) == [answer["id"] or f"msg-{answer['msg_serial']}"]


def test_two_agents_answer_in_one_run_each_with_its_name(http: httpx.Client) -> None:
    events = run(http, run_input(thread(), user("@bot @chef lunch?")))
    got = sorted((name, text) for role, name, text in texts(events).values())
    assert got == [("bot", BOT_ANSWER), ("chef", CHEF_ANSWER)]
    assert events[-1]["type"] == "RUN_FINISHED"


def test_a_message_that_triggers_nobody_finishes_at_once(http: httpx.Client) -> None:
    response = http.post("/v1/ag-ui", json=run_input(thread(), user("hello, people")))
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    events = events_of(iter(response.text.splitlines()))
    assert types(events) == ["RUN_STARTED", "STATE_SNAPSHOT", "RUN_FINISHED"]


def test_a_retried_run_publishes_nothing_twice_and_gets_the_answer_again(
    http: httpx.Client,
) -> None:
    room = thread()
    asked = user("@bot again?")
    first = run(http, run_input(room, asked))
    second = run(http, run_input(room, asked))
    assert list(texts(first).values()) == list(texts(second).values())
    assert [m["data"] for m in history(http, room) if m["client_id"] == "alice"] == ["@bot again?"]


def test_a_tool_call_and_the_live_object_it_makes_arrive(http: httpx.Client) -> None:
    room = thread()
    events = run(http, run_input(room, user("@pollster set one up")))
    kinds = types(events)
    start = kinds.index("TOOL_CALL_START")
    assert kinds[start : start + 4] == [
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "TOOL_CALL_RESULT",
    ]
    call = events[start]
    assert call["toolCallName"] == "create_poll"
    assert json.loads(events[start + 1]["delta"]) == {
        "question": "Lunch?",
        "options": ["pizza", "sushi"],
    }
    assert events[start + 3]["toolCallId"] == call["toolCallId"]
    state = events[1]["snapshot"]
    for event in events:
        if event["type"] == "STATE_DELTA":
            state = apply_patch(state, event["delta"])
    assert "STATE_DELTA" in kinds
    objects = http.get(f"/v1/channels/room:{room}/objects").json()["objects"]
    assert state == plain_state(msgspec.convert(objects, dict[str, ObjectState]))
    [poll] = [oid for oid, got in state.items() if isinstance(got, dict) and "question" in got]
    assert state["root"]["polls"] == {"object_id": state["root"]["polls"]["object_id"]}
    assert state[poll]["question"] == "Lunch?"


def test_a_failed_answer_ends_the_run_with_its_failure(http: httpx.Client) -> None:
    events = run(http, run_input(thread(), user("@broken are you there?")))
    assert events[-1]["type"] == "RUN_ERROR"
    assert events[-1]["message"].startswith("broken: ")


def test_a_stopped_answer_finishes_the_run_as_cancelled(http: httpx.Client) -> None:
    room = thread()
    with streaming(http, room, "@slowbot talk") as lines:
        first = events_of(lines, until="TEXT_MESSAGE_CONTENT")
        stopped = http.post(f"/v1/ai-sdk/chat/{room}/stop", headers=ALICE)
        assert len(stopped.json()["cancelled"]) == 1
        rest = events_of(lines)
    message_id = first[-1]["messageId"]
    assert [e["type"] for e in rest[-2:]] == ["TEXT_MESSAGE_END", "RUN_FINISHED"]
    assert rest[-2]["messageId"] == message_id
    assert rest[-1]["outcome"] == {"type": "cancelled"}
    [answer] = answers(http, room)
    assert answer["status"] == "cancelled" and answer["cancelled_by"] == "alice"


def test_a_run_without_a_new_message_resumes_with_the_answer_whole(http: httpx.Client) -> None:
    room = thread()
    asked = user("@slowbot talk to me")
    with http.stream("POST", "/v1/ag-ui", json=run_input(room, asked), headers=ALICE) as gone:
        partial = events_of(gone.iter_lines(), until="TEXT_MESSAGE_CONTENT")
    # The front end reloads: it has nothing, or what it had (the last an assistant message).
    had = {"id": partial[-1]["messageId"], "role": "assistant", "content": partial[-1]["delta"]}
    with (
        http.stream("POST", "/v1/ag-ui", json=run_input(room), headers=ALICE) as fresh,
        http.stream("POST", "/v1/ag-ui", json=run_input(room, asked, had)) as kept,
    ):
        resumed = [events_of(fresh.iter_lines()), events_of(kept.iter_lines())]
    [answer] = answers(http, room)
    assert answer["status"] == "complete"
    for events in resumed:
        assert types(events)[:3] == ["RUN_STARTED", "STATE_SNAPSHOT", "MESSAGES_SNAPSHOT"]
        snapshot = events[2]["messages"]
        assert [(m["id"], m["role"], m["name"]) for m in snapshot] == [
            (asked["id"], "user", "alice")
        ]
        assert list(texts(events).values()) == [("assistant", "slowbot", answer["data"])]
        assert events[-1]["type"] == "RUN_FINISHED"
    # Nothing streams now: a resume is the snapshot, the answer in it.
    events = run(http, run_input(room))
    assert types(events) == ["RUN_STARTED", "STATE_SNAPSHOT", "MESSAGES_SNAPSHOT", "RUN_FINISHED"]
    assert [m["role"] for m in events[2]["messages"]] == ["user", "assistant"]
    assert events[2]["messages"][1]["content"] == answers(http, room)[0]["data"]


def test_other_peoples_messages_and_presence_arrive_during_a_run(http: httpx.Client) -> None:
    room = thread()
    with streaming(http, room, "@slowbot go") as lines:
        before = events_of(lines, until="TEXT_MESSAGE_CONTENT")
        published = http.post(
            f"/v1/channels/room:{room}/messages", json={"data": "hi all"}, headers=BOB
        )
        assert published.status_code == 200, published.text
        after = events_of(lines)
    events = before + after
    people = [(role, name, text) for role, name, text in texts(events).values() if role == "user"]
    assert people == [("user", "bob", "hi all")]
    presence = [e["value"] for e in events if e["type"] == "CUSTOM"]
    assert all(e["name"] == "roomcast.presence" for e in events if e["type"] == "CUSTOM")
    assert ("slowbot", "streaming") in {(p["client_id"], p["data"]["status"]) for p in presence}
    assert events[-1]["type"] == "RUN_FINISHED"


@pytest.mark.parametrize(
    ("payload", "said"),
    [
        ([], "must be a JSON object"),
        ({"runId": "r", "messages": []}, "threadId"),
        ({"threadId": "a/b", "runId": "r", "messages": []}, "cannot name a room"),
        ({"threadId": "..", "runId": "r", "messages": []}, "cannot name a room"),
        ({"threadId": "t", "runId": 5, "messages": []}, "runId"),
        ({"threadId": "t", "runId": "r", "messages": {}}, "messages"),
        ({"threadId": "t", "runId": "r", "messages": [{"role": "user"}]}, "RunAgentInput"),
        (
            {"threadId": "t", "runId": "r", "messages": [{"id": "m", "role": "wizard"}]},
            "RunAgentInput",
        ),
        (
            {
                "threadId": "t",
                "runId": "r",
                "messages": [
                    {
                        "id": "m",
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {"type": "url", "value": "http://x/y.png"}}
                        ],
                    }
                ],
            },
            "only text",
        ),
        (
            {"threadId": "t", "runId": "r", "messages": [user("x") for _ in range(1001)]},
            "at most 1000",
        ),
    ],
)
def test_bad_input_is_refused_with_400_and_a_message(
    http: httpx.Client, payload: Any, said: str
) -> None:
    response = http.post("/v1/ag-ui", json=payload)
    assert response.status_code == 400, response.text
    assert said in response.json()["error"]["message"]


def test_a_body_that_is_not_json_is_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/ag-ui", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


def test_an_id_another_message_of_the_room_holds_is_refused_and_nothing_is_stored(
    http: httpx.Client,
) -> None:
    room = thread()
    run(http, run_input(room, user("hello from alice", "same-id")))
    taken = http.post(
        "/v1/ag-ui", json=run_input(room, user("@bot from bob", "same-id")), headers=BOB
    )
    assert taken.status_code == 409, taken.text
    assert "taken" in taken.json()["error"]["message"]
    assert [(m["client_id"], m["data"]) for m in history(http, room)] == [
        ("alice", "hello from alice")
    ]


def test_a_run_needs_every_capability_before_anything_is_published(
    http: httpx.Client,
) -> None:
    room = thread()
    minted = http.post(
        "/v1/tokens",
        json={"client_id": "lim", "capability": {"room:*": ["subscribe", "publish"]}},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert minted.status_code == 200, minted.text
    token = {"Authorization": f"Bearer {minted.json()['token']}"}
    refused = http.post("/v1/ag-ui", json=run_input(room, user("@bot hi")), headers=token)
    assert refused.status_code == 403, refused.text
    assert "object-subscribe" in refused.json()["error"]["message"]
    assert history(http, room) == []


def test_a_message_id_over_200_characters_is_400(http: httpx.Client) -> None:
    response = http.post("/v1/ag-ui", json=run_input(thread(), user("hi", "x" * 201)))
    assert response.status_code == 400
    assert "1 to 200 characters" in response.json()["error"]["message"]


def test_a_run_shows_an_answer_that_was_already_streaming_and_what_it_answers(
    http: httpx.Client,
) -> None:
    room = thread()
    dave = {"X-Roomcast-Client-Id": "dave"}
    payload = run_input(room, user("@slowbot talk"))
    with http.stream("POST", "/v1/ag-ui", json=payload, headers=dave) as daves:
        events_of(daves.iter_lines(), until="TEXT_MESSAGE_CONTENT")  # slowbot streams
        erin = run(
            http, run_input(room, user("@bot quick one")), headers={"X-Roomcast-Client-Id": "erin"}
        )
    shown = {(role, name) for role, name, _ in texts(erin).values()}
    assert {("user", "dave"), ("assistant", "slowbot"), ("assistant", "bot")} <= shown
    assert erin[-1]["type"] == "RUN_FINISHED"


@pytest.fixture(scope="module")
def sleepy_server(
    tmp_path_factory: pytest.TempPathFactory, test_env: dict[str, str]
) -> Iterator[ServerProcess]:
    with sleepy_server_process(tmp_path_factory.mktemp("sleepy"), test_env) as server:
        yield server


def test_a_resume_before_the_answer_starts_waits_for_it(sleepy_server: ServerProcess) -> None:
    room = thread()
    with httpx.Client(base_url=sleepy_server.url, timeout=30) as sleepy:
        payload = run_input(room, user("@sleepy still there?"))
        with sleepy.stream("POST", "/v1/ag-ui", json=payload, headers=ALICE) as asked:
            events_of(asked.iter_lines(), until="STATE_SNAPSHOT")  # then the front end reloads
        assert answers(sleepy, room) == []  # the answer has not started
        events = run(sleepy, run_input(room))
        [answer] = answers(sleepy, room)
    assert types(events)[:3] == ["RUN_STARTED", "STATE_SNAPSHOT", "MESSAGES_SNAPSHOT"]
    assert list(texts(events).values()) == [("assistant", "sleepy", answer["data"])]
    assert answer["data"] == SLEEPY_ANSWER and events[-1]["type"] == "RUN_FINISHED"
