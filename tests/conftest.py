"""Shared fixtures: real server processes and raw protocol clients."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings as hypothesis_settings

from roomcast.testing import ServerProcess

hypothesis_settings.register_profile("ci", deadline=None, max_examples=50)
hypothesis_settings.register_profile("dev", deadline=None)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "dev")

# Servers started by tests run no agents unless a test asks for them (tests/agents/): the
# default agent would attach to every room:* channel and answer @assistant.
os.environ["ROOMCAST_AGENTS"] = "none"

# Settings the server tests depend on: short grace, no rate limits.
TEST_ENV = {
    "ROOMCAST_PRESENCE_GRACE_S": "2",
    "ROOMCAST_PUBLISH_RATE": "0",
    "ROOMCAST_LOG_LEVEL": "warning",
}


@pytest.fixture(scope="session")
def test_env() -> dict[str, str]:
    """The environment of a test server; add to a copy of it."""
    return dict(TEST_ENV)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """A SQLite-backed server shared by one test module."""
    with ServerProcess(env=TEST_ENV) as proc:
        yield proc
