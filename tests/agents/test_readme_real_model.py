"""The README's "Use a real model" commands work as written: each one's extra exists and its
environment makes `roomcast serve`'s `@assistant` answer with that provider and model.

The commands are read from the README, so the test and the doc cannot drift. What a test
must change is only where the model is: the service's URL becomes a local fake that speaks
its real streaming format (the OpenAI and Anthropic SDKs read `OPENAI_BASE_URL` and
`ANTHROPIC_BASE_URL`, and so does roomcast), and `pip install` is not run (the test
environment has both extras installed)."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import shlex
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_llm import FakeLLMServer, Reply, anthropic_text, openai_text
from room_messages import settled_answer

from roomcast.client import Message, connect
from roomcast.testing import ServerProcess

ROOT = Path(__file__).parents[2]
PIECES = ["Hello ", "from ", "the ", "fake ", "model."]


@dataclass(frozen=True)
class Command:
    """One documented command: ``pip install -e '.[EXTRA]' && VAR=value ... roomcast serve``."""

    extra: str
    environ: dict[str, str]


def documented() -> list[Command]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Use a real model\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        words = shlex.split(block)
        assert words[:3] == ["pip", "install", "-e"] and words[4] == "&&", block
        assert words[-2:] == ["roomcast", "serve"], block
        extra = re.fullmatch(r"\.\[(\w+)\]", words[3])
        assert extra is not None, block
        environ = {}
        for word in words[5:-2]:
            name, is_assignment, value = word.partition("=")
            assert is_assignment, block
            environ[name] = value
        commands.append(Command(extra.group(1), environ))
    return commands


COMMANDS = documented()
PROVIDER = {"openai": "openai", "anthropic": "anthropic"}  # the extra names the provider
UNSET_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")


def test_the_section_has_one_command_each_for_openai_anthropic_and_a_local_server() -> None:
    kinds = [(c.extra, "OPENAI_BASE_URL" in c.environ) for c in COMMANDS]
    assert kinds == [("openai", False), ("anthropic", False), ("openai", True)]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for command in COMMANDS:
        assert command.extra in extras
        assert importlib.util.find_spec(command.extra) is not None


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(sorted(c.environ)) for c in COMMANDS])
async def test_the_command_makes_the_assistant_answer_from_the_model(command: Command) -> None:
    provider = PROVIDER[command.extra]
    environ = dict.fromkeys(UNSET_ENV, "")
    environ.update(command.environ, ROOMCAST_AGENTS="", ROOMCAST_LOG_LEVEL="info")
    events = openai_text(PIECES) if provider == "openai" else anthropic_text(PIECES)
    async with FakeLLMServer([Reply(events=events)]) as fake:
        if provider == "openai":
            environ["OPENAI_BASE_URL"] = f"{fake.url}/v1"
        else:
            environ["ANTHROPIC_BASE_URL"] = fake.url
        server = ServerProcess(store="memory://", env=environ)
        await asyncio.to_thread(server.start)
        try:
            answer = await ask_assistant(server)
        finally:
            await asyncio.to_thread(server.stop)
    model = command.environ.get("ROOMCAST_MODEL") or (
        "gpt-4.1-mini" if provider == "openai" else "claude-haiku-4-5"
    )
    assert answer.data == "".join(PIECES) and answer.status == "complete"
    assert answer.extras["agent"]["provider"] == provider
    assert answer.extras["agent"]["model"] == model
    [request] = fake.requests
    assert request.body["model"] == model
    key = command.environ.get("OPENAI_API_KEY") or command.environ.get("ANTHROPIC_API_KEY")
    if key is not None:  # the documented key is the one sent
        sent = request.headers.get("authorization") or request.headers.get("x-api-key")
        assert sent is not None and sent.endswith(key)


async def ask_assistant(server: ServerProcess) -> Message:
    async with connect(server.url, client_id="alice") as alice:
        room = alice.channels.get(f"room:{uuid.uuid4().hex[:8]}")
        await room.publish("@assistant say hello")
        return await settled_answer(room)
