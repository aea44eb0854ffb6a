"""Running a scenario of a Node.js project here (ai_sdk/: chat.mjs, transport.mjs; ag_ui/:
run.mjs) with Node.js, and reading what it saw: one JSON object, the last line it prints."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

from roomcast.testing import ServerProcess

PROJECT = Path(__file__).parent / "ai_sdk"
"""The AI SDK tests' project."""
AG_UI = Path(__file__).parent / "ag_ui"
"""The AG-UI tests' project."""
KEY = "app:" + "n" * 32


def run(
    script: str, scenario: str, server: ServerProcess, stdin: str = "", **env: str
) -> dict[str, Any]:
    """Run ``node SCRIPT SCENARIO SERVER ROOM`` of ai_sdk/ in a new room; its result and the
    room. Fails on chunks that the AI SDK's schema refuses."""
    result = run_in(PROJECT, script, scenario, server, stdin, **env)
    assert result.pop("invalid") == [], "chunks that fail the AI SDK's schema"
    return result


def run_in(
    project: Path, script: str, scenario: str, server: ServerProcess, stdin: str = "", **env: str
) -> dict[str, Any]:
    """Run ``node SCRIPT SCENARIO SERVER ROOM`` in ``project`` in a new room; the JSON object
    it printed last, with ``room``."""
    room = "node-" + uuid.uuid4().hex[:8]
    done = subprocess.run(
        ["node", script, scenario, server.url, room],
        cwd=project,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**node_env(), **env},
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "room": room}


def node_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}


def assistant(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["role"] == "assistant"]


def text(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in message["parts"] if p["type"] == "text")


def assert_shared(result: dict[str, Any], answer: str) -> None:
    """What the `shared` scenarios saw: alice and bob each asked once in one room, each
    got ``answer``, and each saw the other's message and its answer."""
    assert text(result["alice"]) == text(result["bob"]) == answer
    users = [
        (m["metadata"]["client_id"], text(m)) for m in result["aliceSees"] if m["role"] == "user"
    ]
    assert users == [("alice", "@bot alice asks"), ("bob", "@bot bob asks")]
    assert assistant(result["aliceSees"]) == [result["alice"], result["bob"]]
    assert [m["role"] for m in result["bobSees"]] == ["user", "assistant"]
    assert result["bobSees"][1] == result["alice"]
