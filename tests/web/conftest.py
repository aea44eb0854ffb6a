"""Browser tests of the web UI: a real ``roomcast serve`` with a scripted agent, driven by
Playwright through Debian's chromium (``/usr/bin/chromium``; never ``playwright install``).

Each test gets its own browser, with a fresh profile, and makes a context per person.
Screenshots go to ``test-results/`` at the top of the repository.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from browsing import People, crowd
from playwright.sync_api import Browser, Playwright, sync_playwright

from roomcast.testing import ServerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# The scripted agent: every answer streams 40+ tokens about 50 ms apart, so that streaming
# can be watched; "vote" makes it vote in the latest poll with its tool.
ANSWER = (
    "How about the noodle bar on the corner? It is quick, cheap and everyone finds "
    "something they like there: soup, dumplings, fried rice and fresh greens. The queue "
    "moves fast at noon, the tables are by the window, and they take cards. If it is full, "
    "the taco place two doors down is a good second choice, with a patio in the sun and "
    "a lunch menu that changes every day of the week."
)
STORY = " ".join(f"Chapter {n}: the group walked on and talked about lunch." for n in range(1, 60))
SCRIPT = f'''
delay_ms = 50

[[replies]]
when = "vote"
text = "I will vote for pizza."
then = "Done: I voted for pizza."
[[replies.tool_calls]]
name = "vote"
arguments = {{ option = "pizza" }}

[[replies]]
when = "story"
text = "{STORY}"

[[replies]]
text = "{ANSWER}"
'''

AGENTS = """
[[agents]]
name = "assistant"
provider = "scripted"
rooms = ["room:*"]
tools = ["builtin"]
script = "{script}"
"""


@contextlib.contextmanager
def serve_agents(
    folder: Path, env: dict[str, str], agents: str = AGENTS
) -> Iterator[ServerProcess]:
    """A server with the agents of ``agents`` (an agents file; ``{script}`` is the path of
    the scripted replies above) and the environment ``env``."""
    script = folder / "script.toml"
    script.write_text(SCRIPT)
    path = folder / "agents.toml"
    path.write_text(agents.format(script=script))
    with ServerProcess(env=env, args=["--agents", str(path)]) as server:
        yield server


@pytest.fixture(scope="module")
def web_server(
    tmp_path_factory: pytest.TempPathFactory, test_env: dict[str, str]
) -> Iterator[ServerProcess]:
    """A server running the scripted ``assistant`` in ``room:*``."""
    with serve_agents(tmp_path_factory.mktemp("agents"), test_env) as server:
        yield server


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture
def browser(playwright: Playwright) -> Iterator[Browser]:
    """A fresh chromium (its own new profile directory) for one test."""
    with tempfile.TemporaryDirectory(prefix="roomcast-chromium-") as downloads:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, downloads_path=downloads
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def people(browser: Browser, web_server: ServerProcess) -> Iterator[People]:
    with crowd(browser, web_server) as people:
        yield people
