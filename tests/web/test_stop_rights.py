"""Stop is offered only to those the server lets stop an answer (docs/protocol.md §6): with
``cancel-own``, the person who asked; with ``cancel-any``, everyone. The page reads its
capability from ``connected.capability``."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from browsing import crowd, last_answer, screenshot, send
from playwright.sync_api import Browser, expect

from conftest import serve_agents
from roomcast.testing import ServerProcess

ROOM_OPS = ["history", "presence", "publish", "signal", "subscribe", "object-subscribe"]


def server_granting(
    tmp_path_factory: pytest.TempPathFactory, env: dict[str, str], cancel: str
) -> Iterator[ServerProcess]:
    capability = json.dumps({"room:*": [*ROOM_OPS, cancel]})
    folder = tmp_path_factory.mktemp("stop")
    env = {**env, "ROOMCAST_ANONYMOUS_CAPABILITY": capability}
    with serve_agents(folder, env) as server:
        yield server


@pytest.fixture(scope="module")
def own_only(
    tmp_path_factory: pytest.TempPathFactory, test_env: dict[str, str]
) -> Iterator[ServerProcess]:
    """Anonymous people may stop their own answers (cancel-own), not others' (cancel-any)."""
    yield from server_granting(tmp_path_factory, test_env, "cancel-own")


@pytest.fixture(scope="module")
def any_answer(
    tmp_path_factory: pytest.TempPathFactory, test_env: dict[str, str]
) -> Iterator[ServerProcess]:
    """Anonymous people may stop any answer (cancel-any)."""
    yield from server_granting(tmp_path_factory, test_env, "cancel-any")


def test_only_the_person_who_asked_sees_stop(browser: Browser, own_only: ServerProcess) -> None:
    with crowd(browser, own_only) as people:
        alice = people.join("Alice", "asked")
        bob = people.join("Bob", "asked")
        send(alice, "@assistant tell us a long story")
        for page in (alice, bob):
            expect(last_answer(page)).to_have_attribute("data-status", "streaming")
            expect(last_answer(page).locator(".body")).to_contain_text("Chapter 2")
        expect(last_answer(bob).get_by_role("button", name="Stop")).to_have_count(0)
        expect(bob.locator(".stop")).to_have_count(0)
        screenshot(bob, "web-stop-not-offered")
        last_answer(alice).get_by_role("button", name="Stop").click()
        for page in (alice, bob):
            expect(last_answer(page).locator(".badge.stopped")).to_have_text("stopped by Alice")
        expect(bob.locator("#toast")).to_be_hidden()


def test_with_cancel_any_everyone_sees_stop(browser: Browser, any_answer: ServerProcess) -> None:
    with crowd(browser, any_answer) as people:
        alice = people.join("Alice", "anyone")
        bob = people.join("Bob", "anyone")
        send(alice, "@assistant tell us a long story")
        expect(last_answer(bob).locator(".body")).to_contain_text("Chapter 2")
        last_answer(bob).get_by_role("button", name="Stop").click()
        for page in (alice, bob):
            expect(last_answer(page).locator(".badge.stopped")).to_have_text("stopped by Bob")
