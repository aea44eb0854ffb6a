"""What the page says of a room's agents matches who answers: the composer names the agents
in the room, an @mention of one that is not in it says so (with Add), "Here now" drops an
agent that was removed, and a scripted agent says it has no model (and why)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from browsing import People, crowd, last_answer, screenshot, send, start_long_answer
from playwright.sync_api import Browser, expect

from conftest import serve_agents
from roomcast.testing import ServerProcess

TWO_AGENTS = """
[[agents]]
name = "ollie"
provider = "scripted"
rooms = ["room:*"]
script = "{script}"

[[agents]]
name = "slowbot"
provider = "scripted"
rooms = ["room:*"]
script = "{script}"

[[agents]]
name = "archivist"
provider = "scripted"
rooms = ["room:archive:*"]
script = "{script}"
"""
REASON = "the openai package is not installed: pip install 'roomcast[openai]'"


@pytest.fixture(scope="module")
def two_agents(
    tmp_path_factory: pytest.TempPathFactory, test_env: dict[str, str]
) -> Iterator[ServerProcess]:
    with serve_agents(tmp_path_factory.mktemp("two-agents"), test_env, TWO_AGENTS) as server:
        yield server


@pytest.fixture
def room_people(browser: Browser, two_agents: ServerProcess) -> Iterator[People]:
    with crowd(browser, two_agents) as people:
        yield people


def test_the_composer_names_the_rooms_agents(room_people: People) -> None:
    alice = room_people.join("Alice", "names")
    box = alice.get_by_label("Message", exact=True)
    expect(box).to_have_attribute("placeholder", "Message… (@ollie or @slowbot to ask)")
    alice.get_by_role("button", name="Remove slowbot from this room").click()
    expect(box).to_have_attribute("placeholder", "Message… (@ollie to ask)")
    alice.get_by_role("button", name="Remove ollie from this room").click()
    expect(box).to_have_attribute("placeholder", "Message…")
    alice.get_by_label("Add an agent").select_option("slowbot")
    alice.get_by_role("button", name="Add", exact=True).click()
    expect(box).to_have_attribute("placeholder", "Message… (@slowbot to ask)")


def test_a_mention_of_an_agent_not_in_the_room_offers_to_add_it(room_people: People) -> None:
    alice = room_people.join("Alice", "hint")
    bob = room_people.join("Bob", "hint")
    alice.get_by_role("button", name="Remove slowbot from this room").click()
    expect(bob.locator("#agents")).not_to_contain_text("slowbot")
    send(alice, "@slowbot are you there?")
    hint = alice.locator("#mention-hint")
    expect(hint).to_have_text("slowbot is not in this room: Add it")
    expect(bob.locator("#mention-hint")).to_be_hidden()  # only for the one who sent it
    screenshot(alice, "web-mention-hint")
    send(alice, "@archivist hello")  # does not serve this room: nothing to add
    expect(hint).to_have_text("archivist does not answer in this room")
    send(alice, "@slowbot hello again")
    hint.get_by_role("button", name="Add slowbot to this room").click()
    expect(bob.locator("#agents")).to_contain_text("slowbot")
    expect(hint).to_be_hidden()
    send(alice, "@slowbot now?")
    expect(last_answer(bob, "slowbot")).to_have_attribute("data-status", "complete", timeout=20000)
    send(alice, "@ollie hello")  # in the room: no hint
    expect(last_answer(bob, "ollie")).to_be_visible(timeout=20000)
    expect(hint).to_be_hidden()


def test_the_agents_are_here_before_the_first_message(room_people: People) -> None:
    alice = room_people.join("Alice", "brand-new")
    people = alice.locator("#people")
    expect(people.locator(".person.agent")).to_have_count(2, timeout=15000)
    expect(people).to_contain_text("ollie")
    expect(people).to_contain_text("slowbot")
    expect(alice.locator("#messages .msg")).to_have_count(0)


def test_a_removed_agent_leaves_here_now(room_people: People) -> None:
    alice = room_people.join("Alice", "leaving")
    send(alice, "hello")
    people = alice.locator("#people")
    expect(people).to_contain_text("slowbot", timeout=15000)
    expect(people).to_contain_text("ollie")
    alice.get_by_role("button", name="Remove slowbot from this room").click()
    expect(people).not_to_contain_text("slowbot", timeout=15000)
    expect(people).to_contain_text("ollie")


def test_scripted_agents_say_they_have_no_model(room_people: People) -> None:
    alice = room_people.join("Alice", "labels")
    row = alice.locator('#agents .agent-row[data-agent="ollie"]')
    expect(row.locator(".detail")).to_have_text(" scripted (no model)")
    expect(row.locator(".note")).to_have_count(0)


@pytest.fixture(scope="module")
def without_openai(
    tmp_path_factory: pytest.TempPathFactory, test_env: dict[str, str]
) -> Iterator[ServerProcess]:
    """The default agent with a key but no `openai` package (a package of that name first
    on the path fails to import the way a missing one does): it answers from a script."""
    shadow = tmp_path_factory.mktemp("no-openai")
    (shadow / "openai").mkdir()
    (shadow / "openai" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'openai'\", name='openai')\n"
    )
    env = {
        **test_env,
        "PYTHONPATH": os.pathsep.join(p for p in (str(shadow), os.environ.get("PYTHONPATH")) if p),
        "OPENAI_API_KEY": "sk-test-not-used",
        "OPENAI_BASE_URL": "",
        "ANTHROPIC_API_KEY": "",
        "ROOMCAST_AGENTS": "",
    }
    with ServerProcess(env=env) as server:
        yield server


def test_an_agent_that_cannot_run_its_model_says_why(
    browser: Browser, without_openai: ServerProcess
) -> None:
    with crowd(browser, without_openai) as people:
        alice = people.join("Alice", "why")
        row = alice.locator('#agents .agent-row[data-agent="assistant"]')
        expect(row.locator(".detail")).to_have_text(" scripted (no model)")
        expect(row.locator(".note")).to_have_text(REASON)
        expect(row).to_have_attribute("title", REASON)
        screenshot(alice, "web-agent-note")


def test_an_answer_waiting_its_turn_shows_the_agent_queued(people: People) -> None:
    bob = people.join("Bob", "queued")
    story = start_long_answer(bob)
    send(bob, "@assistant and after that?")  # one answer at a time in a room: it waits
    expect(bob.locator("#typing")).to_have_text("assistant (queued) is typing…")
    story.get_by_role("button", name="Stop").click()
    expect(story).to_have_attribute("data-status", "cancelled", timeout=10000)
    expect(bob.locator("#typing")).not_to_contain_text("queued")
    expect(last_answer(bob)).to_have_attribute("data-status", "complete", timeout=20000)
