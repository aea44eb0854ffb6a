"""An agents file whose agent cannot be set up stops `roomcast serve --agents FILE` and
`roomcast agents --agents FILE` with one line naming the file and the `[[agents]]` entry
(docs/agents.md, "The agents file")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from roomcast.testing import free_port

GOOD = '[[agents]]\nname = "ok"\nprovider = "scripted"\n\n'
UNKNOWN_TOOL = (
    GOOD + '[[agents]]\nname = "barista"\nprovider = "scripted"\ntools = ["make_coffee"]\n'
)
NO_KEY = GOOD + '[[agents]]\nname = "scribe"\nprovider = "anthropic"\nmodel = "claude-haiku-4-5"\n'

CASES = {
    "unknown tool": (
        UNKNOWN_TOOL,
        "[[agents]] #2 ('barista'): tools: unknown tool 'make_coffee'",
    ),
    "missing key": (
        NO_KEY,
        "[[agents]] #2 ('scribe'): the API key variable $ANTHROPIC_API_KEY is not set",
    ),
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80", "ANTHROPIC_API_KEY": ""}
    return subprocess.run(
        [sys.executable, "-m", "roomcast", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", ["serve", "agents"])
def test_the_error_names_the_file_and_the_entry_on_one_line(
    tmp_path: Path, case: str, command: str
) -> None:
    text, expected = CASES[case]
    path = tmp_path / "agents.toml"
    path.write_text(text)
    if command == "serve":
        done = run("serve", "--port", str(free_port()), "--agents", str(path))
    else:
        done = run("agents", "--agents", str(path), "--key", "workers:" + "k" * 32)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"cannot start the agents: {path}: ")
    assert expected in lines[0]
