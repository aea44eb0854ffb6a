"""The AI SDK's own client (the `ai` package from npm, pinned in ai_sdk/package.json) against
a real server with scripted agents: `DefaultChatTransport` sends and reconnects, every chunk
validates against the schema `ai` exports, `readUIMessageStream` makes the same message as
the room's history, stop ends the answer for everyone, two chats share a room, and refused
requests store nothing. The scenarios are in ai_sdk/chat.mjs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from node_scenarios import KEY, assert_shared, assistant, text
from node_scenarios import run as run_script

from ai_sdk_agents import BOT_ANSWER, POLLSTER_ANSWER
from roomcast.testing import ServerProcess


def run(project: Path, scenario: str, server: ServerProcess, **env: str) -> dict[str, Any]:
    return run_script("chat.mjs", scenario, server, **env)


def test_send_gets_the_answer_and_the_message_is_the_rooms(
    node_project: Path, chat_server: ServerProcess
) -> None:
    result = run(node_project, "send", chat_server)
    assert result["types"][0] == "start" and result["types"][-1] == "finish"
    message = result["message"]
    assert text(message) == BOT_ANSWER
    [author] = [p for p in message["parts"] if p["type"] == "data-author"]
    assert author["data"]["name"] == "bot" and author["data"]["status"] == "complete"
    [stored] = assistant(result["history"])
    assert stored == message  # read with the SDK's reader, the stream is the history


def test_a_tool_call_is_a_dynamic_tool_part_of_the_answer(
    node_project: Path, chat_server: ServerProcess
) -> None:
    result = run(node_project, "tool", chat_server)
    types = [c["type"] for c in result["chunks"]]
    called = types.index("tool-input-available")
    assert types[called + 1] == "tool-output-available"
    assert "text-delta" in types[:called] and "text-delta" in types[called + 2 :]
    assert types[-3:] == ["text-end", "data-author", "finish"]
    message = result["message"]
    assert [p["type"] for p in message["parts"]] == ["data-author", "text", "dynamic-tool"]
    tool = message["parts"][2]
    assert tool["toolName"] == "create_poll" and tool["state"] == "output-available"
    assert text(message) == POLLSTER_ANSWER
    [stored] = assistant(result["history"])
    assert stored == message


def test_a_failed_answer_ends_with_an_error_chunk(
    node_project: Path, chat_server: ServerProcess
) -> None:
    result = run(node_project, "failed", chat_server)
    end = result["chunks"][-1]
    assert end["type"] == "error" and end["errorText"].startswith("broken: model 'gone-1' at ")
    [author] = [p for p in result["message"]["parts"] if p["type"] == "data-author"]
    assert author["data"]["status"] == "failed"
    assert end["errorText"] == f"broken: {author['data']['failure']}"


def test_an_aborted_fetch_then_reconnect_gives_the_whole_answer_once(
    node_project: Path, chat_server: ServerProcess
) -> None:
    result = run(node_project, "resume", chat_server)
    assert result["first"][-1] == "text-delta"
    [stored] = assistant(result["history"])
    assert stored["parts"][-1]["state"] == "done"  # the reconnect read to the end
    assert result["message"] == stored
    assert text(result["message"]).count("word") == 60


def test_stop_ends_the_answer_cancelled_for_everyone(
    node_project: Path, chat_server: ServerProcess
) -> None:
    result = run(node_project, "stop", chat_server)
    assert result["stop"]["status"] == 200 and len(result["stop"]["body"]["cancelled"]) == 1
    assert result["askerEnd"] == {"type": "abort", "reason": "stopped by alice"}
    assert result["watcherEnd"] == result["askerEnd"]
    [stored] = assistant(result["history"])
    [author] = [p for p in stored["parts"] if p["type"] == "data-author"]
    assert author["data"]["status"] == "cancelled" and author["data"]["cancelled_by"] == "alice"


def test_two_chats_on_one_id_see_each_other(node_project: Path, chat_server: ServerProcess) -> None:
    result = run(node_project, "shared", chat_server)
    assert_shared(result, BOT_ANSWER)


def test_refused_requests_store_nothing(node_project: Path, chat_server: ServerProcess) -> None:
    token = httpx.post(
        chat_server.url + "/v1/tokens",
        json={"client_id": "reader", "capability": {"room:*": ["subscribe", "history"]}},
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()["token"]
    result = run(node_project, "refused", chat_server, READ_ONLY_TOKEN=token)
    assert result["badKey"] == 401
    assert result["readOnly"] == 403
    assert result["history"] == []
