"""The Model Context Protocol's own conformance suite (@modelcontextprotocol/conformance,
pinned in mcp_conformance/package.json with the Node 22 it needs) against ``/mcp`` of a
live ``roomcast serve``: every server scenario runs, with mcp_conformance/expected-failures.yml
(the scenarios that do not apply, each with why) as the baseline. Any other failing
scenario fails the test, and so does a listed one that passes. docs/mcp.md records the
results."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from roomcast.testing import ServerProcess

PROJECT = Path(__file__).parent / "mcp_conformance"
SUITE = "node_modules/@modelcontextprotocol/conformance"
VERSION = "0.1.16"
# The scenarios that test any MCP server (lifecycle, ping, listing, tool errors, concurrent
# requests and their headers, SSE or JSON answers, DNS rebinding): each must pass.
GENERIC = {
    "server-initialize",
    "ping",
    "tools-list",
    "tools-call-error",
    "resources-list",
    "server-sse-multiple-streams",
    "server-sse-polling",
    "dns-rebinding-protection",
}
_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d\d-\d\dT[\d-]+Z$")


@pytest.fixture(scope="module")
def project(request: pytest.FixtureRequest) -> Path:
    """mcp_conformance/, installed with ``npm ci`` (by tests/ecosystem/conftest.py's
    ``installed``) when its lock changed."""
    conftest: Any = request.config.pluginmanager.get_plugin(
        str(Path(__file__).with_name("conftest.py"))
    )
    assert conftest is not None, "tests/ecosystem/conftest.py is not loaded"
    installed: Path = conftest.installed(PROJECT)
    return installed


def outcomes(results: Path) -> dict[str, list[dict[str, Any]]]:
    """The checks of each scenario the suite ran, from its output directory."""
    checks: dict[str, list[dict[str, Any]]] = {}
    for path in results.iterdir():
        match = _RESULT_DIR.match(path.name)
        assert match, path.name
        checks[match["scenario"]] = json.loads((path / "checks.json").read_text())
    return checks


def test_the_conformance_suite_passes_but_for_its_baseline(
    project: Path, tmp_path: Path, test_env: dict[str, str]
) -> None:
    package = json.loads((project / SUITE / "package.json").read_text())
    assert package["version"] == VERSION
    node = project / "node_modules" / ".bin" / "node"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    assert int(version.stdout.strip().lstrip("v").split(".")[0]) >= 22, version.stdout
    results = tmp_path / "results"
    env = {**test_env, "ROOMCAST_ALLOW_ANONYMOUS": "true"}
    with ServerProcess(env=env) as server:
        done = subprocess.run(
            [
                node,
                f"{SUITE}/dist/index.js",
                "server",
                "--url",
                f"{server.url}/mcp",
                "--suite",
                "all",
                "--expected-failures",
                "expected-failures.yml",
                "--output-dir",
                str(results),
            ],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=300,
        )
        log = server.output()
    report = f"{done.stdout}\n{done.stderr}\nthe server's log:\n{log}"
    assert done.returncode == 0, report
    checks = outcomes(results)
    failed = {
        scenario
        for scenario, found in checks.items()
        if any(check["status"] in ("FAILURE", "WARNING") for check in found)
    }
    assert GENERIC <= set(checks), report
    assert not GENERIC & failed, report
    assert "Traceback" not in log, log
