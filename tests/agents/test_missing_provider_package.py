"""`OPENAI_API_KEY=sk-... roomcast serve` after a plain `pip install -e .`: the `openai`
package is not there. The server still starts, and everything that shows the default agent
says what really answers (a script) and why (docs/agents.md, "The default agent")."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import httpx
import pytest
from room_messages import settled_answer

from roomcast.client import connect
from roomcast.testing import ServerProcess

REASON = "the openai package is not installed: pip install 'roomcast[openai]'"


@pytest.fixture(scope="module")
def without_openai(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose Python cannot import `openai`, as after `pip install -e .`: a package
    of that name first on the path fails to import the way a missing one does."""
    shadow = tmp_path_factory.mktemp("no-openai")
    (shadow / "openai").mkdir()
    (shadow / "openai" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'openai'\", name='openai')\n"
    )
    path = os.pathsep.join(p for p in (str(shadow), os.environ.get("PYTHONPATH")) if p)
    env = {
        "PYTHONPATH": path,
        "OPENAI_API_KEY": "sk-test-not-used",
        "OPENAI_BASE_URL": "",
        "ANTHROPIC_API_KEY": "",
        "ROOMCAST_AGENTS": "",
        "ROOMCAST_LOG_LEVEL": "info",
    }
    with ServerProcess(store="memory://", env=env) as server:
        yield server


async def test_the_agent_list_says_scripted_and_why(without_openai: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=without_openai.url) as http:
        [agent] = (await http.get("/v1/agents")).json()["items"]
    assert (agent["name"], agent["provider"], agent["model"]) == (
        "assistant",
        "scripted",
        "scripted",
    )
    assert agent["note"] == REASON


def test_the_banner_says_scripted_and_why_on_one_line(without_openai: ServerProcess) -> None:
    lines = without_openai.output().splitlines()
    assert "  agents:    assistant (scripted (no model), mention)" in lines
    assert f"             assistant: {REASON}" in lines  # whole, to copy from the terminal


async def test_the_answer_names_the_cause_and_says_it_is_scripted(
    without_openai: ServerProcess,
) -> None:
    channel = f"room:{uuid.uuid4().hex[:8]}"
    async with connect(without_openai.url, client_id="alice") as alice:
        room = alice.channels.get(channel)
        await room.publish("@assistant hello?")
        answer = await settled_answer(room)
        members = await room.presence.members()
    assert answer.status == "complete"
    assert isinstance(answer.data, str) and answer.data.startswith("[scripted] ")
    assert REASON in answer.data
    assert "No language model is configured" not in answer.data
    assert answer.extras["agent"]["provider"] == "scripted"
    assert answer.extras["agent"]["model"] == "scripted"
    [agent] = [m for m in members if m.client_id == "assistant"]
    assert agent.data["model"] == "scripted"
    assert REASON in without_openai.output()  # the log says it too
