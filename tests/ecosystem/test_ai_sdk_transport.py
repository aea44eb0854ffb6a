"""roomcast.js's `RoomcastChatTransport` (the AI SDK's `ChatTransport` over the WebSocket
protocol) with the real `ai` package, against a real server with scripted agents: a message
gets the agent's answer, every chunk validates against the schema `ai` exports, the SDK's
reader makes the room's history message, an aborted stream then `reconnectToStream` gives
the whole answer once, `stop` ends it cancelled for everyone, two transports see each
other's messages and answers live; the rules ported to JavaScript (who answers, history as
UIMessages) give what the server's give; roomcast.d.ts type-checks as a `ChatTransport`.
The scenarios are in ai_sdk/transport.mjs."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest
from node_scenarios import PROJECT, assert_shared, assistant, node_env, run, text

from ai_sdk_agents import BOT_ANSWER
from roomcast.protocol.answering import expected_agents
from roomcast.protocol.http import AgentInfo
from roomcast.protocol.messages import Message
from roomcast.server.ai_sdk_chunks import ui_messages
from roomcast.testing import ServerProcess


def transport(scenario: str, server: ServerProcess, stdin: str = "") -> dict[str, Any]:
    return run("transport.mjs", scenario, server, stdin)


def test_a_message_gets_the_agents_answer_and_the_message_is_the_rooms(
    node_project: Path, chat_server: ServerProcess
) -> None:
    result = transport("send", chat_server)
    assert result["types"][0] == "start" and result["types"][-1] == "finish"
    assert result["end"] == "done"
    message = result["message"]
    assert text(message) == BOT_ANSWER
    [author] = [p for p in message["parts"] if p["type"] == "data-author"]
    assert author["data"]["name"] == "bot" and author["data"]["status"] == "complete"
    [person, stored] = result["history"]
    assert person["metadata"]["client_id"] == "alice"
    assert text(person) == "@bot where do we eat?"
    assert stored == message  # the same as the HTTP routes make it


def test_regenerate_asks_the_agent_again(node_project: Path, chat_server: ServerProcess) -> None:
    result = transport("regenerate", chat_server)
    first, again = result["first"], result["again"]
    assert again["id"].startswith(first["id"] + "-") and result["end"] == "done"
    assert again["metadata"]["reply_to"] == first["metadata"]["reply_to"]
    assert text(again) == BOT_ANSWER
    assert assistant(result["history"]) == [first, again]  # the first answer stays


def test_an_agent_that_stays_silent_ends_the_stream(
    node_project: Path, chat_server: ServerProcess
) -> None:
    result = transport("quiet", chat_server)
    assert result["types"] == ["start", "finish"]
    [asked, marker] = result["log"]  # the stream waited for quiet, which said it stays silent
    assert asked["extras"]["awaits"] == ["quiet"]
    assert marker["name"] == "agent.silent" and marker["client_id"] == "quiet"
    assert assistant(result["history"]) == []


def test_file_parts_and_bad_ids_are_refused_and_store_nothing(
    node_project: Path, chat_server: ServerProcess
) -> None:
    result = transport("refused", chat_server)
    assert result["file"] == "file parts are not supported yet: send text parts"
    assert result["badIds"] == [40000] * 3  # `no:colons`, `.` and `..`
    assert result["history"] == []


def test_an_aborted_stream_then_reconnect_gives_the_whole_answer_once(
    node_project: Path, chat_server: ServerProcess
) -> None:
    result = transport("resume", chat_server)
    assert result["first"][-1] == "text-delta" and result["firstEnd"] == "AbortError"
    assert result["end"] == "done"
    [stored] = assistant(result["history"])
    assert stored["parts"][-1]["state"] == "done"  # aborting did not stop the answer
    assert result["message"] == stored
    assert text(result["message"]).count("word") == 60
    assert result["after"] is None  # nothing streams any more


def test_reconnect_follows_an_answer_to_a_message_posted_elsewhere(
    node_project: Path, chat_server: ServerProcess
) -> None:
    result = transport("resumeOther", chat_server)  # the message has no extras.awaits
    assert result["end"] == "done"
    [stored] = assistant(result["history"])
    assert result["message"] == stored and stored["parts"][-1]["state"] == "done"
    assert text(stored).count("word") == 60


def test_stop_ends_the_answer_cancelled_for_everyone(
    node_project: Path, chat_server: ServerProcess
) -> None:
    result = transport("stop", chat_server)
    assert result["wrongId"] == 40000  # and it cancelled nothing: the stop after it did
    assert len(result["stopped"]["cancelled"]) == 1
    assert result["askerEnd"] == {"type": "abort", "reason": "stopped by alice"}
    assert result["watcherEnd"] == result["askerEnd"]
    [stored] = assistant(result["history"])
    [author] = [p for p in stored["parts"] if p["type"] == "data-author"]
    assert author["data"]["status"] == "cancelled" and author["data"]["cancelled_by"] == "alice"


def test_two_transports_on_one_chat_see_each_others_messages_and_answers_live(
    node_project: Path, chat_server: ServerProcess
) -> None:
    result = transport("shared", chat_server)
    assert_shared(result, BOT_ANSWER)
    assert result["aliceSees"] == result["history"]  # live, as GET .../messages gives it


def test_the_sdks_chat_shows_the_whole_room(node_project: Path, chat_server: ServerProcess) -> None:
    """Two AI SDK `Chat`s (what `useChat` runs), each with `onMessages` as its setMessages."""
    result = transport("useChat", chat_server)
    assert result["status"] == ["ready", "ready"]
    assert result["alice"] == result["bob"] == result["history"]
    assert [m["role"] for m in result["history"]] == ["user", "assistant"] * 2
    assert [text(m) for m in assistant(result["history"])] == [BOT_ANSWER] * 2


AGENTS = [
    AgentInfo(name="bot", provider="scripted", model="s", policy="mention", rooms=["room:*"]),
    AgentInfo(name="helper", provider="scripted", model="s", policy="auto", rooms=["room:*"]),
    AgentInfo(name="host", provider="scripted", model="s", policy="always", rooms=["room:lunch"]),
    AgentInfo(name="scoped", provider="s", model="s", policy="mention", rooms=["room:team:*"]),
]
TEXTS = [
    "@bot hi",
    "bot, where?",
    "robot hi",
    "hi all",
    "@helper and @bot",
    "@BOT shouting",
    "bot's idea",
    "@bot-2 is not bot... or is it",
    "x.bot y@bot",
    "   ",
    "ask scoped or Scoped",
    "é @bot ü",
]


def message(serial: int, data: Any, **fields: Any) -> Message:
    base: dict[str, Any] = {
        "msg_serial": serial,
        "id": None,
        "client_id": "alice",
        "name": "text",
        "data": data,
        "extras": {},
        "timestamp": 1000 + serial,
        "updated_at": 1000 + serial,
        "status": "complete",
    }
    return Message(**{**base, **fields})


def rule_cases() -> list[tuple[str, Message, frozenset[str] | None]]:
    drafts = [message(1, t) for t in TEXTS] + [
        message(1, "@bot hi", client_id="bot"),
        message(1, "@bot hi", status="streaming"),
        message(1, {"q": "@bot"}),
        message(1, "@bot deep", extras={"agent": {"name": "x", "depth": 3}}),
        message(1, "@bot shallow", extras={"agent": {"name": "x", "depth": 1}}),
        message(1, "@bot poll", name="poll"),
    ]
    listings: list[frozenset[str] | None] = [None, frozenset({"bot", "host"}), frozenset()]
    channels = ["room:lunch", "room:team:a", "room:other"]
    return [(c, m, listed) for c in channels for m in drafts for listed in listings]


def answer(serial: int, to: int, agent: str, data: Any, **fields: Any) -> Message:
    extras = {"agent": {"name": agent, "provider": "p", "model": "m", "depth": 1}, "reply_to": to}
    return message(
        serial, data, client_id=agent, extras={**extras, **fields.pop("extras", {})}, **fields
    )


HISTORY = [
    message(1, "@bot @helper lunch?"),
    answer(2, 1, "bot", "Tacos."),
    answer(3, 1, "helper", "half", status="streaming"),
    answer(4, 1, "helper", {"tool": "vote", "arguments": {"x": 1}, "result": [1]}, name="tool"),
    answer(
        5,
        1,
        "bot",
        {"tool": "web", "arguments": None, "result": "down", "error": True},
        name="tool",
    ),
    answer(6, 1, "quiet", "not for me", name="agent.silent"),
    message(7, {"json": ["data", 2]}, client_id="bob"),
    answer(8, 1, "bot", "Again.", extras={"regenerate": "ab12"}),
    answer(9, 7, "bot", "", status="failed", extras={"failure": "boom"}),
    answer(10, 7, "helper", "stopped", status="cancelled", cancelled_by="bob"),
    message(11, "gone", deleted=True),
    message(12, "hello from an agent", client_id="bot", extras={"agent": {"name": "bot"}}),
    message(13, {"poll": 1}, name="poll"),
]


def test_the_ported_rules_agree_with_the_servers(node_project: Path) -> None:
    cases = rule_cases()
    wire = {
        "expected": [
            {
                "agents": msgspec.to_builtins(AGENTS),
                "channel": channel,
                "message": msgspec.to_builtins(draft),
                "listed": None if listed is None else sorted(listed),
            }
            for channel, draft, listed in cases
        ],
        "listed": {"channel": "room:lunch", "messages": msgspec.to_builtins(HISTORY)},
    }
    done = subprocess.run(
        ["node", "transport.mjs", "agree", "-", "-"],
        cwd=PROJECT,
        input=json.dumps(wire),
        capture_output=True,
        text=True,
        timeout=60,
        env=node_env(),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    python = [expected_agents(AGENTS, channel, draft, listed) for channel, draft, listed in cases]
    assert result["expected"] == python
    assert any(python) and not all(python)  # the cases are not all alike
    assert result["listed"] == ui_messages("room:lunch", HISTORY)


WEB = Path(__file__).resolve().parents[2] / "src" / "roomcast" / "web"


@pytest.mark.parametrize("config", ["tsconfig.json", "tsconfig.declarations.json"])
def test_the_declarations_type_check_as_the_ai_sdks_chat_transport(
    node_project: Path, config: str
) -> None:
    """typecheck.ts uses the transport as a `ChatTransport<UIMessage>`; the declarations
    file is checked on its own too (the first run skips declaration files' own errors)."""
    done = subprocess.run(
        ["node", "node_modules/typescript/bin/tsc", "--project", config],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
        env=node_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_declarations_name_every_export_of_the_library() -> None:
    exported = re.findall(r"export \{([^}]*)\}", (WEB / "roomcast.js").read_text())
    names = {name.strip() for group in exported for name in group.split(",")}
    declared = set(
        re.findall(
            r"^export (?:class|function|const) (\w+)", (WEB / "roomcast.d.ts").read_text(), re.M
        )
    )
    assert names and names == declared
