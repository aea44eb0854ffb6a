"""The docs describe what exists: every setting is documented."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from roomcast.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_in_the_configuration_doc() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for f in fields(Settings):
        flag = "--key" if f.name == "keys" else "--" + f.name.replace("_", "-")
        env = "ROOMCAST_" + f.name.upper()
        assert f"| {f.name} | `{flag}` | `{env}` |" in text, f"{f.name} is not documented"


def test_the_readme_example_runs_against_a_server(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    from roomcast.testing import ServerProcess

    readme = (ROOT / "README.md").read_text()
    [snippet] = re.findall(r"```python\n(.*?)```", readme, re.S)
    with ServerProcess(store="memory://") as server:
        code = snippet.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
        script = tmp_path / "example.py"
        script.write_text(code)
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 0, result.stderr
    assert '"action":"connected"' in result.stdout
    assert '"action":"attached"' in result.stdout
    assert '"action":"event"' in result.stdout and '"tacos?"' in result.stdout


def test_the_sdk_guide_example_runs_against_a_server(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    from roomcast.testing import ServerProcess

    guide = (ROOT / "docs" / "sdk.md").read_text()
    snippet = re.findall(r"```python\n(.*?)```", guide, re.S)[0]
    with ServerProcess(store="memory://") as server:
        script = tmp_path / "sdk_example.py"
        script.write_text(snippet.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}"))
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "published 1",
        "1 alice tacos?",
        "history: 1 tacos?",
        "here: ['alice']",
    ]


def test_the_sdk_guide_live_objects_examples_run_against_a_server(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys
    import textwrap

    from roomcast.testing import ServerProcess

    guide = (ROOT / "docs" / "sdk.md").read_text()
    section = guide.split("## Live objects", 1)[1].split("\n## ", 1)[0]
    objects, polls = re.findall(r"```python\n(.*?)```", section, re.S)
    with ServerProcess(store="memory://") as server:
        body = objects.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
        body += textwrap.indent(polls, "    ")
        script = tmp_path / "objects_example.py"
        script.write_text(
            "import asyncio\nfrom roomcast.client import connect\n\nasync def main():\n"
            + textwrap.indent(body, "    ")
            + "\nasyncio.run(main())\n"
        )
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "2",
        "{'soil': 'loam'}",
        "{'opt-1': 0, 'opt-2': 1, 'opt-3': 0}",
        "['tomatoes by the fence']",
    ]
