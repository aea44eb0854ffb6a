"""Scripted agents for the AI SDK chat tests (tests/server/test_ai_sdk.py and
tests/ecosystem/test_ai_sdk_node.py): ``bot`` and ``chef`` answer at once, ``slowbot``
streams for several seconds (time to reconnect or stop it), ``quiet`` never answers anyone,
``pollster`` calls the built-in ``create_poll`` tool in its answer, ``broken`` fails (its
model service is a port where nothing listens)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from roomcast.testing import ServerProcess, free_port

SCRIPTED = {  # name: its extra settings
    "bot": "",
    "slowbot": "",
    # quiet answers nobody: the server, not knowing that, waits for it
    "quiet": "max_chain_depth = 0",
    "chef": "",
    "pollster": 'tools = ["create_poll"]',
}
BROKEN = """
[[agents]]
name = "broken"
provider = "openai"
model = "gone-1"
base_url = "http://127.0.0.1:{port}/v1"
api_key_env = "ROOMCAST_TEST_NO_SUCH_KEY"
rooms = ["room:*"]
"""
SCRIPTS = {
    "bot.toml": '[[replies]]\ntext = "Tacos at noon."\n',
    "slowbot.toml": 'delay_ms = 150\n[[replies]]\ntext = "' + " ".join(["word"] * 60) + '"\n',
    "quiet.toml": '[[replies]]\ntext = "Never said."\n',
    "chef.toml": '[[replies]]\ntext = "Pasta at one."\n',
    "pollster.toml": """
[[replies]]
text = "Let me set up a poll."
then = "The poll is open."
[[replies.tool_calls]]
name = "create_poll"
arguments = { question = "Lunch?", options = ["pizza", "sushi"] }
""",
}
BOT_ANSWER = "[scripted] Tacos at noon."
CHEF_ANSWER = "[scripted] Pasta at one."
POLLSTER_ANSWER = "[scripted] Let me set up a poll.\n\nThe poll is open."


def write_agents(folder: Path) -> str:
    """The agents file (and its scripts) in ``folder``; returns its path."""
    agents = [
        f'[[agents]]\nname = "{name}"\nprovider = "scripted"\nscript = "{name}.toml"\n'
        f'rooms = ["room:*"]\n{extra}\n'
        for name, extra in SCRIPTED.items()
    ]
    (folder / "agents.toml").write_text("\n".join([*agents, BROKEN.format(port=free_port())]))
    for name, text in SCRIPTS.items():
        (folder / name).write_text(text)
    return str(folder / "agents.toml")


@contextlib.contextmanager
def chat_server_process(
    folder: Path, test_env: dict[str, str], key: str
) -> Iterator[ServerProcess]:
    """A server with these agents (written in ``folder``), the API key ``key`` and anonymous
    access."""
    env = {
        **test_env,
        "ROOMCAST_AGENTS": write_agents(folder),
        "ROOMCAST_KEYS": key,
        "ROOMCAST_ALLOW_ANONYMOUS": "1",
        "ROOMCAST_LOG_LEVEL": "info",  # what each agent decides, in a failed test's report
    }
    with ServerProcess(store="memory://", env=env) as server:
        yield server


SLEEPY = """
[[agents]]
name = "sleepy"
provider = "scripted"
script = "sleepy.toml"
rooms = ["room:*"]
"""
SLEEPY_ANSWER = "[scripted] Yawn."


@contextlib.contextmanager
def sleepy_server_process(folder: Path, test_env: dict[str, str]) -> Iterator[ServerProcess]:
    """A server whose one agent, ``sleepy``, waits 1.5 s before each word, the first one
    too: its answer starts late, after the message it answers is stored."""
    (folder / "agents.toml").write_text(SLEEPY)
    script = 'think_ms = 1500\ndelay_ms = 1500\n[[replies]]\ntext = "Yawn."\n'
    (folder / "sleepy.toml").write_text(script)
    env = {**test_env, "ROOMCAST_AGENTS": str(folder / "agents.toml")}
    with ServerProcess(store="memory://", env=env) as server:
        yield server
