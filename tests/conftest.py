"""Shared fixtures: real server processes and raw protocol clients."""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Iterator

import pytest
from hypothesis import settings as hypothesis_settings

from roomcast.testing import ServerProcess


def import_plugin_modules_now(*packages: str) -> None:
    """Import every module of ``packages`` at collection time.

    pytest rewrites the modules of its plugins' distributions (hypothesis, schemathesis)
    as they are imported, with ``ast.parse``. Both import many modules lazily, deep inside a
    running test, and there CPython 3.11 (seen on 3.11.7) sometimes fails the parse with
    ``SystemError: AST constructor recursion depth mismatch`` (CPython gh-106905). Imported
    once collection is over, at a shallow stack and before any test runs, nothing is left to
    rewrite later. (Not at conftest import: hypothesis refuses to build strategies then.)
    """
    for package in packages:
        root = importlib.import_module(package)
        for module in pkgutil.walk_packages(root.__path__, package + "."):
            if module.name.startswith("hypothesis.extra."):
                continue  # integrations with optional packages (numpy, django, ...)
            try:
                importlib.import_module(module.name)
            except ModuleNotFoundError:
                pass  # an integration whose optional package is not installed


def pytest_collection_finish(session: pytest.Session) -> None:
    import_plugin_modules_now("hypothesis", "schemathesis")


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
