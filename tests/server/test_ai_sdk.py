"""The AI SDK chat endpoints (docs/ai-sdk.md) against a real server with scripted agents:
status codes, headers, the order of the chunks, regenerate, reconnect, stop, and bodies
that are refused, never with a 5xx."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from ai_sdk_agents import (
    BOT_ANSWER,
    CHEF_ANSWER,
    POLLSTER_ANSWER,
    SLEEPY_ANSWER,
    chat_server_process,
    sleepy_server_process,
)
from roomcast.testing import ServerProcess

KEY = "app:" + "k" * 32
ALICE = {"X-Roomcast-Client-Id": "alice"}
BOB = {"X-Roomcast-Client-Id": "bob"}


@pytest.fixture(scope="module")
def chat_server(
    tmp_path_factory: pytest.TempPathFactory, test_env: dict[str, str]
) -> Iterator[ServerProcess]:
    with chat_server_process(tmp_path_factory.mktemp("ai-sdk-agents"), test_env, KEY) as server:
        yield server


@pytest.fixture
def http(chat_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=chat_server.url, timeout=30) as client:
        yield client


def chat_id() -> str:
    return "chat-" + uuid.uuid4().hex[:8]


def body(room: str, text: str, message_id: str | None = None, **more: Any) -> dict[str, Any]:
    message = {
        "id": message_id or uuid.uuid4().hex,
        "role": "user",
        "parts": [{"type": "text", "text": text}],
    }
    return {"id": room, "messages": [message], "trigger": "submit-message", **more}


def read_chunks(lines: Iterator[str]) -> list[Any]:
    """The chunks of a UI message stream, up to ``[DONE]`` (which is kept as a string)."""
    out: list[Any] = []
    for line in lines:
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            out.append("[DONE]")
            break
        out.append(json.loads(line[len("data: ") :]))
    return out


def post_chat(http: httpx.Client, payload: Any, headers: dict[str, str] = ALICE) -> list[Any]:
    with http.stream("POST", "/v1/ai-sdk/chat", json=payload, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
        assert response.headers["content-type"] == "text/event-stream"
        return read_chunks(response.iter_lines())


def room_history(http: httpx.Client, room: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = http.get(f"/v1/channels/room:{room}/messages").json()["items"]
    return items


@contextmanager
def slowbot_streaming(http: httpx.Client, room: str) -> Iterator[Iterator[str]]:
    """Alice asks slowbot in ``room``; the lines of the answer's stream after its first
    text (so it streams now)."""
    with http.stream("POST", "/v1/ai-sdk/chat", json=body(room, "@slowbot go"), headers=ALICE) as r:
        lines = r.iter_lines()
        for line in lines:
            if '"text-delta"' in line:
                break
        yield lines


def text_of(chunks: list[Any]) -> str:
    return "".join(c["delta"] for c in chunks if isinstance(c, dict) and c["type"] == "text-delta")


def test_a_mention_streams_the_answer_in_order(http: httpx.Client) -> None:
    room = chat_id()
    chunks = post_chat(http, body(room, "@bot where do we eat?"))
    types = [c if isinstance(c, str) else c["type"] for c in chunks]
    assert types[0] == "start"
    assert types[1:3] == ["data-author", "text-start"]
    assert types[-4:] == ["text-end", "data-author", "finish", "[DONE]"]
    assert set(types[3:-4]) == {"text-delta"}
    assert chunks[0]["messageMetadata"]["room"] == f"room:{room}"
    author = chunks[1]["data"]
    assert author["name"] == "bot" and author["provider"] == "scripted"
    assert chunks[-3]["data"]["status"] == "complete"
    trigger, answer = room_history(http, room)
    assert trigger["client_id"] == "alice" and trigger["extras"]["awaits"] == ["bot"]
    assert chunks[0]["messageId"] == f"reply-{trigger['msg_serial']}"
    assert answer["data"] == text_of(chunks) == BOT_ANSWER
    # The messages endpoint holds the same assistant message.
    messages = http.get(f"/v1/ai-sdk/chat/{room}/messages").json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["id"] == chunks[0]["messageId"]
    assert messages[1]["parts"][1] == {"type": "text", "text": answer["data"], "state": "done"}


def test_a_message_that_triggers_no_agent_gets_start_and_finish_at_once(
    http: httpx.Client,
) -> None:
    room = chat_id()
    chunks = post_chat(http, body(room, "nobody is named here"))
    assert [c if isinstance(c, str) else c["type"] for c in chunks] == ["start", "finish", "[DONE]"]
    [stored] = room_history(http, room)
    assert stored["data"] == "nobody is named here" and "awaits" not in stored["extras"]


def test_an_agent_that_stays_silent_ends_the_stream(http: httpx.Client) -> None:
    room = chat_id()
    chunks = post_chat(http, body(room, "@quiet anything?"))
    assert [c if isinstance(c, str) else c["type"] for c in chunks] == ["start", "finish", "[DONE]"]
    names = [m["name"] for m in room_history(http, room)]
    assert names == ["text", "agent.silent"]
    assert http.get(f"/v1/ai-sdk/chat/{room}/messages").json()["messages"][-1]["role"] == "user"


def answers_in(chunks: list[Any]) -> dict[str, dict[str, Any]]:
    """Each answer in a reply's chunks (by its msg_serial): the types of its chunks in
    order, its text, and its author as its last ``data-author`` chunk says."""
    out: dict[str, dict[str, Any]] = {}
    for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        serial = chunk["id"].removeprefix("text-") if "id" in chunk else None
        if serial is None or chunk["type"] not in (
            "data-author",
            "text-start",
            "text-delta",
            "text-end",
        ):
            continue
        answer = out.setdefault(serial, {"types": [], "text": "", "author": None})
        answer["types"].append(chunk["type"])
        answer["text"] += chunk.get("delta", "")
        if chunk["type"] == "data-author":
            answer["author"] = chunk["data"]
    return out


def assert_one_answer(answer: dict[str, Any]) -> None:
    types = answer["types"]
    assert types[:2] == ["data-author", "text-start"] and types[-2:] == ["text-end", "data-author"]
    assert set(types[2:-2]) <= {"text-delta"}


def test_two_agents_answer_in_one_assistant_message(http: httpx.Client) -> None:
    room = chat_id()
    chunks = post_chat(http, body(room, "@bot and @chef: lunch? (@quiet too)"))
    assert chunks[0]["type"] == "start" and chunks[-2:] == [
        {"type": "finish", "finishReason": "stop"},
        "[DONE]",
    ]
    answers = answers_in(chunks)
    for answer in answers.values():
        assert_one_answer(answer)
    log = room_history(http, room)
    assert sorted(log[0]["extras"]["awaits"]) == ["bot", "chef", "quiet"]
    texts = {m["client_id"]: m for m in log if m["name"] == "text" and m["client_id"] != "alice"}
    assert {a["author"]["name"]: a["text"] for a in answers.values()} == {
        "bot": BOT_ANSWER,
        "chef": CHEF_ANSWER,
    }
    assert {name: m["data"] for name, m in texts.items()} == {
        "bot": BOT_ANSWER,
        "chef": CHEF_ANSWER,
    }
    assert "agent.silent" in [m["name"] for m in log]  # quiet said so; the stream waited
    # History holds the same assistant message: each answer its author and text parts.
    [_, reply] = http.get(f"/v1/ai-sdk/chat/{room}/messages").json()["messages"]
    assert reply["id"] == chunks[0]["messageId"]
    by_serial = sorted(answers.items(), key=lambda item: int(item[0]))
    expected = []
    for serial, answer in by_serial:
        expected += [
            {"type": "data-author", "id": serial, "data": answer["author"]},
            {"type": "text", "text": answer["text"], "state": "done"},
        ]
    assert reply["parts"] == expected


def test_a_tool_call_streams_in_its_place_in_the_answer(http: httpx.Client) -> None:
    room = chat_id()
    chunks = post_chat(http, body(room, "@pollster what do we eat?"))
    types = [c if isinstance(c, str) else c["type"] for c in chunks]
    called = types.index("tool-input-available")
    assert types[called + 1] == "tool-output-available"
    assert types[:3] == ["start", "data-author", "text-start"]
    assert types[-4:] == ["text-end", "data-author", "finish", "[DONE]"]
    assert set(types[3:called]) == set(types[called + 2 : -4]) == {"text-delta"}
    assert text_of(chunks[:called]) == "[scripted] Let me set up a poll."
    assert text_of(chunks) == POLLSTER_ANSWER
    started, ended = chunks[called], chunks[called + 1]
    assert started["toolName"] == "create_poll" and started["dynamic"] is True
    assert started["input"] == {"question": "Lunch?", "options": ["pizza", "sushi"]}
    assert ended["toolCallId"] == started["toolCallId"]
    [tool] = [m for m in room_history(http, room) if m["name"] == "tool"]
    assert tool["data"]["error"] is not True and ended["output"] == tool["data"]["result"]
    reply = http.get(f"/v1/ai-sdk/chat/{room}/messages").json()["messages"][-1]
    assert [p["type"] for p in reply["parts"]] == ["data-author", "text", "dynamic-tool"]
    assert reply["parts"][2]["state"] == "output-available"


def test_a_failed_answer_ends_the_stream_with_an_error_chunk(http: httpx.Client) -> None:
    room = chat_id()
    chunks = post_chat(http, body(room, "@broken are you there?"))
    assert chunks[-1] == "[DONE]"
    end = chunks[-2]
    assert end["type"] == "error"
    assert end["errorText"].startswith("broken: ") and "connection failed" in end["errorText"]
    [answer] = answers_in(chunks).values()
    assert_one_answer(answer)
    assert answer["author"]["status"] == "failed"
    assert end["errorText"] == f"broken: {answer['author']['failure']}"
    assert room_history(http, room)[-1]["status"] == "failed"


def test_the_same_message_id_twice_publishes_once(http: httpx.Client) -> None:
    room = chat_id()
    first = post_chat(http, body(room, "@bot hi", message_id="m-1"))
    again = post_chat(http, body(room, "@bot hi", message_id="m-1"))
    assert text_of(first) == text_of(again) == BOT_ANSWER
    assert [m["name"] for m in room_history(http, room)] == ["text", "text"]


def test_regenerate_asks_the_same_agent_again(http: httpx.Client) -> None:
    room = chat_id()
    first = post_chat(http, body(room, "@bot hi"))
    messages = http.get(f"/v1/ai-sdk/chat/{room}/messages").json()["messages"]
    regenerated = post_chat(
        http,
        {
            "id": room,
            "messages": messages[:1],
            "trigger": "regenerate-message",
            "messageId": first[0]["messageId"],
        },
    )
    assert regenerated[0]["messageId"].startswith(first[0]["messageId"] + "-")
    assert text_of(regenerated) == BOT_ANSWER
    answers = [m for m in room_history(http, room) if m["client_id"] == "bot"]
    assert len(answers) == 2
    assert answers[1]["extras"]["regenerate"] == regenerated[0]["messageMetadata"]["regenerate"]
    ids = [m["id"] for m in http.get(f"/v1/ai-sdk/chat/{room}/messages").json()["messages"]]
    assert ids == [messages[0]["id"], first[0]["messageId"], regenerated[0]["messageId"]]


def test_reconnect_is_204_without_a_streaming_answer_and_replays_one(
    http: httpx.Client,
) -> None:
    room = chat_id()
    assert http.get(f"/v1/ai-sdk/chat/{room}/stream").status_code == 204
    with slowbot_streaming(http, room):
        pass  # closing the response leaves the answer running
    with http.stream("GET", f"/v1/ai-sdk/chat/{room}/stream", headers=BOB) as response:
        assert response.status_code == 200
        assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
        chunks = read_chunks(response.iter_lines())
    answer = room_history(http, room)[-1]
    assert answer["status"] == "complete"
    assert text_of(chunks) == answer["data"]
    assert chunks[-2]["type"] == "finish"
    assert http.get(f"/v1/ai-sdk/chat/{room}/stream").status_code == 204


def test_reconnect_in_the_moment_before_an_answer_starts_waits_for_it(
    tmp_path: Path, test_env: dict[str, str]
) -> None:
    room = chat_id()
    with (
        sleepy_server_process(tmp_path, test_env) as server,
        httpx.Client(base_url=server.url, timeout=30) as sleepy,
    ):
        with sleepy.stream("POST", "/v1/ai-sdk/chat", json=body(room, "@sleepy hi")) as asked:
            assert asked.status_code == 200  # the tab closes before the first word
        with sleepy.stream("GET", f"/v1/ai-sdk/chat/{room}/stream") as response:
            assert response.status_code == 200
            chunks = read_chunks(response.iter_lines())
    assert text_of(chunks) == SLEEPY_ANSWER
    assert chunks[-2]["type"] == "finish"


def test_reconnect_replays_an_answer_to_a_message_posted_elsewhere(http: httpx.Client) -> None:
    """A message from the web UI or the channel API awaits no agent (no extras.awaits): the
    answer streaming to it is still replayed, whole, and followed to its end."""
    room = chat_id()
    posted = http.post(
        f"/v1/channels/room:{room}/messages", json={"data": "@slowbot go"}, headers=ALICE
    )
    assert posted.status_code == 200, posted.text
    deadline = time.monotonic() + 30
    while not any(m["status"] == "streaming" for m in room_history(http, room)):
        assert time.monotonic() < deadline, "the answer never started"
        time.sleep(0.02)
    with http.stream("GET", f"/v1/ai-sdk/chat/{room}/stream", headers=BOB) as response:
        assert response.status_code == 200
        chunks = read_chunks(response.iter_lines())
    answer = room_history(http, room)[-1]
    assert answer["status"] == "complete"
    assert text_of(chunks) == answer["data"] != ""
    assert chunks[-2]["type"] == "finish"


def test_stop_cancels_the_answer_and_the_stream_ends_with_abort(http: httpx.Client) -> None:
    room = chat_id()
    with slowbot_streaming(http, room) as lines:
        refused = http.post(f"/v1/ai-sdk/chat/{room}/stop", headers=BOB)
        assert refused.status_code == 403, refused.text  # not bob's message
        stopped = http.post(f"/v1/ai-sdk/chat/{room}/stop", headers=ALICE)
        assert stopped.status_code == 200, stopped.text
        rest = read_chunks(lines)
    assert rest[-2] == {"type": "abort", "reason": "stopped by alice"}
    answer = room_history(http, room)[-1]
    assert answer["status"] == "cancelled" and answer["cancelled_by"] == "alice"
    assert stopped.json() == {"cancelled": [answer["msg_serial"]]}
    assert http.post(f"/v1/ai-sdk/chat/{room}/stop", headers=ALICE).json() == {"cancelled": []}


BAD_BODIES: list[Any] = [
    [1],
    "text",
    {},
    {"id": "a:b", "messages": []},
    {"id": "", "messages": []},
    {"id": "x" * 196, "messages": []},
    {"id": ".", "messages": []},
    {"id": "..", "messages": []},
    {"id": "ok", "messages": "hi"},
    {"id": "ok", "messages": [{"id": "1", "role": "robot", "parts": []}]},
    {"id": "ok", "messages": [{"id": "1", "role": "user"}]},
    {"id": "ok", "messages": [{"id": "1", "role": "user", "parts": [{"text": "x"}]}]},
    {"id": "ok", "messages": [], "trigger": "resume-stream"},
    {"id": "ok", "messages": [], "messageId": 3},
    {
        "id": "ok",
        "messages": [
            {
                "id": "1",
                "role": "user",
                "parts": [{"type": "file", "url": "data:,", "mediaType": "text/plain"}],
            }
        ],
    },
]


@pytest.mark.parametrize("payload", BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_bad_bodies_are_400_and_store_nothing(http: httpx.Client, payload: Any) -> None:
    response = http.post("/v1/ai-sdk/chat", json=payload, headers=ALICE)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == 40000
    assert http.get("/v1/channels/room:ok/messages").json()["items"] == []


def test_a_clear_word_for_ids_and_files(http: httpx.Client) -> None:
    for bad in ("a:b", ".", ".."):
        refused = http.post("/v1/ai-sdk/chat", json={"id": bad, "messages": []})
        assert "cannot name a room" in refused.json()["error"]["message"]
    file_body = body("ok", "see file")
    file_body["messages"][0]["parts"].append({"type": "file", "url": "data:,", "mediaType": "x/y"})
    refused = http.post("/v1/ai-sdk/chat", json=file_body)
    assert "file parts are not supported" in refused.json()["error"]["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/ai-sdk/chat/a:b/stream",
        "/v1/ai-sdk/chat/a:b/messages",
        "/v1/ai-sdk/chat/%20/stream",
        "/v1/ai-sdk/chat/%2E/messages",
        "/v1/ai-sdk/chat/%2E%2E/stream",
    ],
)
def test_bad_ids_in_the_path_are_400(http: httpx.Client, path: str) -> None:
    assert http.get(path).status_code == 400
    assert http.post("/v1/ai-sdk/chat/a:b/stop").status_code == 400
    assert http.get("/v1/ai-sdk/chat/ok/messages?limit=0").status_code == 400


def test_credentials_and_capabilities_are_checked(http: httpx.Client) -> None:
    room = chat_id()
    bad = http.post(
        "/v1/ai-sdk/chat", json=body(room, "@bot hi"), headers={"Authorization": "Bearer app:nope"}
    )
    assert bad.status_code == 401
    token = http.post(
        "/v1/tokens",
        json={"client_id": "reader", "capability": {"room:*": ["subscribe", "history"]}},
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()["token"]
    reader = {"Authorization": f"Bearer {token}"}
    refused = http.post("/v1/ai-sdk/chat", json=body(room, "@bot hi"), headers=reader)
    assert refused.status_code == 403
    assert room_history(http, room) == []
    assert http.get(f"/v1/ai-sdk/chat/{room}/messages", headers=reader).status_code == 200
    assert http.get(f"/v1/ai-sdk/chat/{room}/stream", headers=reader).status_code == 204
    writer = http.post(
        "/v1/tokens",
        json={"client_id": "writer", "capability": {"room:*": ["publish"]}},
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()["token"]
    refused = http.post(
        "/v1/ai-sdk/chat", json=body(room, "@bot hi"), headers={"Authorization": f"Bearer {writer}"}
    )
    assert refused.status_code == 403  # it could not read the answers
    assert room_history(http, room) == []


def test_the_document_lists_the_routes(http: httpx.Client, tmp_path: Path) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/v1/ai-sdk/chat", "/v1/ai-sdk/chat/{id}/stream", "/v1/ai-sdk/chat/{id}/stop"} <= set(
        paths
    )
    assert "/v1/ai-sdk/chat/{id}/messages" in paths


def test_stop_takes_no_body_or_an_object(http: httpx.Client) -> None:
    room = chat_id()
    assert http.post(f"/v1/ai-sdk/chat/{room}/stop").json() == {"cancelled": []}
    assert (
        http.post(f"/v1/ai-sdk/chat/{room}/stop", json={"messageId": "reply-3"}).status_code == 200
    )
    for bad in (b"null", b"[]", b'{"messageId": 3}'):
        assert http.post(f"/v1/ai-sdk/chat/{room}/stop", content=bad).status_code == 400


def test_stop_with_an_id_that_names_no_answer_is_400_and_stops_nothing(
    http: httpx.Client,
) -> None:
    """An id that does not parse never widens to every answer in the room."""
    room = chat_id()
    with slowbot_streaming(http, room) as lines:
        for message_id in ("msg-1", "garbage", "", "reply-x"):
            refused = http.post(
                f"/v1/ai-sdk/chat/{room}/stop", json={"messageId": message_id}, headers=ALICE
            )
            assert refused.status_code == 400, refused.text
            assert "messageId" in refused.json()["error"]["message"]
        rest = read_chunks(lines)
    assert rest[-2] == {"type": "finish", "finishReason": "stop"}
    assert room_history(http, room)[-1]["status"] == "complete"


@pytest.mark.parametrize("path", ["/v1/ai-sdk/chat", "/v1/channels/room:cut/messages"])
def test_a_client_that_goes_away_mid_body_is_no_server_error(
    chat_server: ServerProcess, http: httpx.Client, path: str
) -> None:
    """Content-Length 100, 4 bytes sent, then the socket closes: the client is gone; the
    server logs no error, stores nothing, and goes on answering."""
    logged = len(chat_server.output())
    host, port = chat_server.url.removeprefix("http://").split(":")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        'X-Roomcast-Client-Id: alice\r\nContent-Length: 100\r\n\r\n{"id'
    )
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(head.encode())
    # The next request is served after the server saw the first one go.
    assert http.get("/v1/channels/room:cut/messages").json()["items"] == []
    assert post_chat(http, body(chat_id(), "@bot still there?"))[-2]["type"] == "finish"
    log = chat_server.output()[logged:]
    assert "Traceback" not in log and "ERROR" not in log, log
