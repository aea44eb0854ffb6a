"""Shared fixtures: real server processes and raw protocol clients."""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import uuid
from collections.abc import Generator, Iterator

import pytest
import redis
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

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

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


@pytest.fixture
def redis_store() -> Iterator[str]:
    """A redis:// store URL (the test Redis at ``REDIS_URL``) under a key prefix of this
    test's own, deleted after the test; the test fails (never skips) without that Redis."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        pytest.fail(f"this test needs a Redis at {REDIS_URL} ({exc})", pytrace=False)
    prefix = f"test-{uuid.uuid4().hex}"
    yield f"{REDIS_URL}?prefix={prefix}"
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    client.close()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """A SQLite-backed server shared by one test module."""
    with ServerProcess(env=TEST_ENV) as proc:
        yield proc


# ---------------------------------------------------------------------------- the server log

# A log record opens with the server's format (``2026-12-06 10:00:00,000 ERROR   name: ...``)
# or uvicorn's (``ERROR:    ...``); the lines up to the next one (a traceback) belong to it.
RECORD_START = re.compile(
    r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ +(?P<level>[A-Z]+) |(?P<uvicorn>[A-Z]+):  )"
)
BAD_LEVELS = frozenset({"ERROR", "CRITICAL"})
# What each server wrote has been checked up to this byte offset.
checked_up_to: dict[ServerProcess, int] = {}


def log_records(text: str) -> list[str]:
    """``text`` cut into log records, each with the lines that follow it (a traceback)."""
    records: list[list[str]] = []
    for line in text.splitlines():
        if not records or RECORD_START.match(line):
            records.append([line])
        else:
            records[-1].append(line)
    return ["\n".join(lines) for lines in records]


def is_bad(record: str) -> bool:
    """An ERROR (or CRITICAL) record, or a traceback anywhere."""
    start = RECORD_START.match(record)
    level = start and (start["level"] or start["uvicorn"])
    return level in BAD_LEVELS or "Traceback" in record


def unexpected_records(text: str, expect: list[re.Pattern[str]]) -> list[str]:
    return [
        record
        for record in log_records(text)
        if is_bad(record) and not any(pattern.search(record) for pattern in expect)
    ]


class ServerLog:
    """What the test expects in the logs of the servers it runs, besides clean lines."""

    def __init__(self, item: pytest.Item) -> None:
        self.expect = [
            re.compile(pattern)
            for marker in item.iter_markers("server_log")
            for pattern in marker.kwargs.get("expect", ())
        ]

    def expect_record(self, pattern: str) -> None:
        """Allow ERROR records (or tracebacks) that ``pattern`` finds (``re.search``)."""
        self.expect.append(re.compile(pattern))


SERVER_LOG = pytest.StashKey[ServerLog]()


@pytest.fixture(autouse=True)
def server_log(request: pytest.FixtureRequest) -> ServerLog:
    """Every test fails if a :class:`ServerProcess` logged a ``Traceback`` or an ``ERROR``
    (or ``CRITICAL``) record while it ran that the test did not expect.

    Checked once the test and all its fixtures are torn down, so a server shared by a module
    is checked for what it wrote during this test only (its start-up counts for the first
    test that used it, its shutdown for the last). A test declares what it provokes on
    purpose (a store outage, a killed Redis), as regular expressions searched in the record
    (its first line and its traceback)::

        @pytest.mark.server_log(expect=[r"store write failed"])
        def test_outage(server_log): ...

    or at run time with ``server_log.expect_record(pattern)``. Nothing a client can do
    (drop, reset, half-close, stall, bad input) may be expected: that is a server bug.
    """
    log = ServerLog(request.node)
    request.node.stash[SERVER_LOG] = log
    return log


REPORTED_LINES = 200  # of each server's log, in a failed test's report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A test that failed shows what each of its servers logged while it ran (the end of
    it), after the server logged where its tasks stand: a failure in CI can be read from
    its report alone, a hang included (the servers' tests log warnings and up only)."""
    report = yield
    if call.when == "call" and report.failed:
        for proc in ServerProcess.tracked():
            proc.log_tasks()
            lines = proc.output(checked_up_to.get(proc, 0)).splitlines()[-REPORTED_LINES:]
            report.sections.append((f"server {proc.url} log, during the test", "\n".join(lines)))
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    yield
    log = item.stash.get(SERVER_LOG, None)
    unexpected: list[str] = []
    for proc in ServerProcess.tracked():
        since, end = checked_up_to.get(proc, 0), proc.log_size()
        text = proc.output(since)  # what comes after `end` is read again next time
        checked_up_to[proc] = end
        if proc.closed:
            proc.untrack()
            del checked_up_to[proc]
        if log is not None:
            unexpected += [f"server {proc.url}:\n{r}" for r in unexpected_records(text, log.expect)]
    if unexpected:
        pytest.fail(
            "unexpected Traceback or ERROR in the server log (declare what the test provokes "
            "with @pytest.mark.server_log(expect=[...])):\n\n" + "\n\n".join(unexpected),
            pytrace=False,
        )
