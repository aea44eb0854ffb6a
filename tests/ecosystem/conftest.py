"""The Node.js projects of the ecosystem tests, each installed with `npm ci` when its lock
file changed: ai_sdk/ (the AI SDK tests), ag_ui/ (the AG-UI tests) and mcp_conformance/
(the MCP conformance suite, run by test_mcp_conformance.py); and a server with the scripted
agents of tests/ai_sdk_agents.py."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_scenarios import AG_UI, KEY, PROJECT

from ai_sdk_agents import chat_server_process
from roomcast.testing import ServerProcess

STAMP = ".roomcast-installed"
"""In a project's node_modules/: the hash of the package.json and lock it was installed from."""


def install_stamp(project: Path) -> str:
    files = (project / "package.json", project / "package-lock.json")
    return hashlib.sha256(b"".join(path.read_bytes() for path in files)).hexdigest()


def installed(project: Path) -> Path:
    """``project`` with its node_modules installed (`npm ci`) when missing or stale."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail(
            "Node.js and npm are needed for the tests of tests/ecosystem (Node 20 or later)"
        )
    stamp = install_stamp(project)
    done = project / "node_modules" / STAMP
    if not done.exists() or done.read_text() != stamp:
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=project,
            check=True,
            timeout=600,
        )
        done.write_text(stamp)
    return project


@pytest.fixture(scope="session")
def node_project() -> Path:
    """ai_sdk/, installed."""
    return installed(PROJECT)


@pytest.fixture(scope="session")
def ag_ui_project() -> Path:
    """ag_ui/, installed."""
    return installed(AG_UI)


@pytest.fixture(scope="module")
def chat_server(
    tmp_path_factory: pytest.TempPathFactory, test_env: dict[str, str]
) -> Iterator[ServerProcess]:
    with chat_server_process(tmp_path_factory.mktemp("ai-sdk-node"), test_env, KEY) as server:
        yield server
