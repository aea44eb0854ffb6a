"""The web UI's acceptance tests: two people (two browser contexts) and the scripted agent
(``assistant``, whose answers stream 40+ tokens about 50 ms apart)."""

from __future__ import annotations

import itertools

from browsing import (
    People,
    answer_states,
    last_answer,
    screenshot,
    send,
    start_long_answer,
    watch_answers,
)
from playwright.sync_api import expect

from conftest import ANSWER

LABEL = "[scripted] "
ANSWER_TEXT = LABEL + ANSWER


def test_two_people_see_each_others_messages_and_presence(people: People) -> None:
    alice = people.join("Alice", "lunch")
    bob = people.join("Bob", "lunch")
    expect(alice.locator("#people")).to_contain_text("Bob", timeout=5000)
    expect(bob.locator("#people")).to_contain_text("Alice", timeout=5000)
    send(alice, "Hi Bob, lunch at noon?")
    expect(bob.locator("#messages")).to_contain_text("Hi Bob, lunch at noon?", timeout=5000)
    send(bob, "Sure, *where*?")
    expect(alice.locator("#messages .msg").last).to_contain_text("Sure, where?", timeout=5000)
    expect(alice.locator("#messages .msg").last.locator(".author")).to_have_text("Bob")
    expect(alice.locator("#messages .msg").last.locator(".avatar")).to_have_text("BO")
    screenshot(alice, "web-1-chat")


def test_an_answer_streams_in_both_windows(people: People) -> None:
    alice = people.join("Alice", "stream")
    bob = people.join("Bob", "stream")
    watch_answers(alice)
    watch_answers(bob)
    send(alice, "@assistant pick a place")
    expect(last_answer(alice)).to_have_attribute("data-status", "streaming")
    expect(bob.locator("#people .status")).to_have_text("streaming")  # the agent's presence
    screenshot(alice, "web-2-streaming")
    expect(last_answer(alice)).to_have_attribute("data-status", "complete", timeout=20000)
    expect(last_answer(bob)).to_have_attribute("data-status", "complete", timeout=20000)
    final_alice = last_answer(alice).locator(".body").inner_text()
    final_bob = last_answer(bob).locator(".body").inner_text()
    assert final_alice == final_bob
    assert last_answer(alice).locator(".body").text_content() == ANSWER_TEXT
    expect(last_answer(alice).locator(".reply-link")).to_contain_text("Alice: @assistant pick")
    for page in (alice, bob):
        states = answer_states(page)
        growing = [s["text"] for s in states if s["status"] == "streaming"]
        assert len(growing) >= 3, states
        for shorter, longer in itertools.pairwise(growing):
            assert longer.startswith(shorter) and len(longer) > len(shorter)
        assert states[-1]["text"] == ANSWER_TEXT
    expect(bob.locator("#people .status")).to_have_text("idle")
    screenshot(bob, "web-2-answered")


def test_a_reload_mid_stream_shows_the_whole_answer_once(people: People) -> None:
    alice = people.join("Alice", "reload")
    bob = people.join("Bob", "reload")
    send(alice, "hello")
    expect(bob.locator("#people")).to_contain_text("assistant")
    send(alice, "@assistant pick a place again")
    expect(last_answer(bob)).to_have_attribute("data-status", "streaming")
    expect(last_answer(bob).locator(".body")).to_contain_text("noodle bar")  # some tokens in
    bob.reload()
    expect(bob.locator("#conn-state")).to_have_text("connected")
    expect(last_answer(bob)).to_have_attribute("data-status", "complete", timeout=20000)
    expect(last_answer(alice)).to_have_attribute("data-status", "complete", timeout=20000)
    assert last_answer(bob).locator(".body").text_content() == ANSWER_TEXT
    assert last_answer(alice).locator(".body").text_content() == ANSWER_TEXT
    expect(bob.locator('#messages .msg[data-author="assistant"]')).to_have_count(1)
    expect(bob.locator("#messages .msg")).to_have_count(3)


def test_stop_shows_who_stopped_the_answer_everywhere(people: People) -> None:
    alice = people.join("Alice", "stop")
    bob = people.join("Bob", "stop")
    answer = start_long_answer(bob)
    expect(answer.locator(".body")).to_contain_text("Chapter 2")
    # Alice did not ask: without cancel-any she may not stop Bob's answer, and is not offered to.
    expect(last_answer(alice).get_by_role("button", name="Stop")).to_have_count(0)
    answer.get_by_role("button", name="Stop").click()
    for page in (alice, bob):
        expect(last_answer(page).locator(".badge.stopped")).to_have_text("stopped by Bob")
        expect(last_answer(page)).to_have_attribute("data-status", "cancelled", timeout=10000)
        expect(last_answer(page).get_by_role("button", name="Stop")).to_have_count(0)
    screenshot(alice, "web-4-stopped")
    alice.reload()
    expect(alice.locator("#conn-state")).to_have_text("connected")
    expect(last_answer(alice).locator(".badge.stopped")).to_have_text("stopped by Bob")
    text = last_answer(alice).locator(".body").text_content() or ""
    assert text.startswith(LABEL + "Chapter 1") and "Chapter 59" not in text


def test_a_growing_answer_keeps_the_controls_in_use(people: People) -> None:
    """Every append shows the answer again; the Stop button under the pointer and an open
    reaction picker stay the same elements (a click on a replaced button is lost)."""
    alice = people.join("Alice", "steady")
    answer = start_long_answer(alice)
    stop = answer.get_by_role("button", name="Stop").element_handle()
    answer.get_by_role("button", name="React", exact=True).click()
    thumbs = answer.get_by_role("button", name="React with 👍")
    expect(thumbs).to_be_visible()
    expect(answer.locator(".body")).to_contain_text("Chapter 3")  # many appends later
    assert stop.evaluate("button => button.isConnected")
    expect(thumbs).to_be_visible()
    react = answer.get_by_role("button", name="React", exact=True)
    expect(react).to_have_attribute("aria-expanded", "true")
    stop.click()
    expect(answer).to_have_attribute("data-status", "cancelled", timeout=10000)
    thumbs.click()
    expect(answer.locator(".reaction")).to_have_text("👍 1")


def test_polls_update_live_and_count_the_agents_vote(people: People) -> None:
    alice = people.join("Alice", "poll")
    bob = people.join("Bob", "poll")
    send(alice, "hello")
    expect(alice.locator("#people")).to_contain_text("assistant")
    alice.get_by_text("New poll").click()
    alice.get_by_label("Question").fill("Where for lunch?")
    alice.get_by_label("Options (one per line)").fill("pizza\nsushi\ntacos")
    alice.get_by_role("button", name="Create poll").click()
    for page in (alice, bob):
        expect(page.locator(".poll h3")).to_have_text("Where for lunch?")
    bob.get_by_role("button", name="Vote sushi").click()
    for page in (alice, bob):
        expect(page.get_by_role("button", name="Vote sushi: 1 vote")).to_be_visible()
        expect(page.get_by_role("button", name="Vote pizza: 0 votes")).to_be_visible()
    alice.get_by_role("button", name="Vote sushi").click()
    for page in (alice, bob):
        expect(page.get_by_role("button", name="Vote sushi: 2 votes")).to_be_visible()
    send(alice, "@assistant please vote too")
    for page in (alice, bob):
        expect(page.get_by_role("button", name="Vote pizza: 1 vote")).to_be_visible(timeout=20000)
        expect(page.locator(".poll-foot")).to_contain_text("3 votes")
    expect(alice.locator("#messages .tool-line")).to_contain_text("vote")
    expect(last_answer(alice)).to_have_attribute("data-status", "complete", timeout=20000)
    screenshot(alice, "web-5-poll")


def test_html_in_a_message_renders_as_text(people: People) -> None:
    alice = people.join("Alice", "safe")
    bob = people.join("Bob", "safe")
    dialogs: list[str] = []
    for page in (alice, bob):
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    payload = "<img src=x onerror=alert(1)>"
    send(alice, payload)
    send(alice, f"**bold** and [a link](javascript:alert(2)) and `{payload}`")
    for page in (alice, bob):
        expect(page.locator("#messages .msg").nth(1)).to_be_visible()
        expect(page.locator("#messages .msg .body").first).to_have_text(payload)
        expect(page.locator("#messages img")).to_have_count(0)
        expect(page.locator("#messages a[href^='javascript']")).to_have_count(0)
        expect(page.locator("#messages .msg .body code")).to_have_text(payload)
    bob.wait_for_timeout(300)
    assert dialogs == []
    screenshot(bob, "web-6-escaped")
