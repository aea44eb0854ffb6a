"""The docs describe what exists: every setting is documented."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

from roomcast.settings import Settings
from roomcast.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_in_the_configuration_doc() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for f in fields(Settings):
        flag = "--key" if f.name == "keys" else "--" + f.name.replace("_", "-")
        env = "ROOMCAST_" + f.name.upper()
        assert f"| {f.name} | `{flag}` | `{env}` |" in text, f"{f.name} is not documented"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


def run_against_a_server(code: str, script: Path) -> str:
    """Run ``code`` as ``script`` against a fresh server (the docs' 127.0.0.1:8000 becomes
    its address); its output, once it has exited cleanly."""
    with ServerProcess(store="memory://") as server:
        script.write_text(code.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}"))
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_readme_example_runs_against_a_server(tmp_path: Path) -> None:
    [snippet] = python_blocks((ROOT / "README.md").read_text())
    output = run_against_a_server(snippet, tmp_path / "example.py")
    assert '"action":"connected"' in output
    assert '"action":"attached"' in output
    assert '"action":"event"' in output and '"tacos?"' in output


def test_the_sdk_guide_example_runs_against_a_server(tmp_path: Path) -> None:
    snippet = python_blocks((ROOT / "docs" / "sdk.md").read_text())[0]
    output = run_against_a_server(snippet, tmp_path / "sdk_example.py")
    assert output.splitlines() == [
        "published 1",
        "1 alice tacos?",
        "history: 1 tacos?",
        "here: ['alice']",
    ]


def test_the_sdk_guide_live_objects_examples_run_against_a_server(tmp_path: Path) -> None:
    guide = (ROOT / "docs" / "sdk.md").read_text()
    section = guide.split("## Live objects", 1)[1].split("\n## ", 1)[0]
    objects, polls = python_blocks(section)
    body = objects + textwrap.indent(polls, "    ")
    code = (
        "import asyncio\nfrom roomcast.client import connect\n\nasync def main():\n"
        + textwrap.indent(body, "    ")
        + "\nasyncio.run(main())\n"
    )
    output = run_against_a_server(code, tmp_path / "objects_example.py")
    assert output.splitlines() == [
        "2",
        "{'soil': 'loam'}",
        "{'opt-1': 0, 'opt-2': 1, 'opt-3': 0}",
        "['tomatoes by the fence']",
    ]
