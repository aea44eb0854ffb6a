"""The web UI beyond the acceptance scenario: editing, reactions, replies, typing, boards,
the room's agents, history, reconnecting, and the phone and dark layouts."""

from __future__ import annotations

import itertools
import json
import urllib.request
from collections.abc import Callable

import httpx
from browsing import People, answer_states, last_answer, screenshot, send, watch_answers
from playwright.sync_api import Locator, Page, WebSocketRoute, expect

from conftest import ANSWER
from roomcast.testing import ServerProcess

ANSWER_TEXT = "[scripted] " + ANSWER


def message(page: Page, text: str) -> Locator:
    """The last message whose own text (not a reply's quote) holds ``text``."""
    return page.locator("#messages .msg").filter(has=page.locator(".body", has_text=text)).last


def bob_through(people: People, room: str, relay: Callable[[WebSocketRoute], None]) -> Page:
    """Bob joins ``room`` in a browser of his own, his WebSocket through ``relay``."""
    context = people.browser.new_context()
    people.contexts.append(context)
    bob = context.new_page()
    bob.route_web_socket("**/v1/ws*", relay)
    bob.goto(f"{people.server.url}/#/room/{room}")
    bob.get_by_label("Your name").fill("Bob")
    bob.get_by_role("button", name="Join").click()
    return bob


def test_edit_delete_react_reply_and_typing(people: People) -> None:
    alice = people.join("Alice", "manners")
    bob = people.join("Bob", "manners")
    send(alice, "Lunch at 12?")
    mine = message(alice, "Lunch at 12?")
    mine.hover()
    mine.get_by_role("button", name="Edit").click()
    editor = alice.get_by_label("Edit the message")
    editor.fill("Lunch at 12:30?")
    editor.press("Enter")
    expect(message(bob, "Lunch at 12:30?").locator(".badge")).to_have_text("edited")

    theirs = message(bob, "Lunch at 12:30?")
    expect(theirs.get_by_role("button", name="Edit")).to_have_count(0)  # not Bob's to edit
    theirs.hover()
    theirs.get_by_role("button", name="React", exact=True).click()
    theirs.get_by_role("button", name="React with 👍").click()
    for page in (alice, bob):
        expect(message(page, "Lunch at 12:30?").locator(".reaction")).to_have_text("👍 1")
    message(alice, "Lunch at 12:30?").locator(".reaction").click()  # Alice adds hers
    for page in (alice, bob):
        expect(message(page, "Lunch at 12:30?").locator(".reaction")).to_have_text("👍 2")

    theirs.hover()
    theirs.get_by_role("button", name="Reply").click()
    expect(bob.locator("#reply-preview")).to_contain_text("Replying to Alice")
    bob.get_by_label("Message", exact=True).press_sequentially("Works for me")
    expect(alice.locator("#typing")).to_have_text("Bob is typing…")
    bob.get_by_label("Message", exact=True).press("Enter")
    reply = message(alice, "Works for me")
    expect(reply.locator(".reply-link")).to_have_text("↪ Alice: Lunch at 12:30?")
    expect(alice.locator("#typing")).to_have_text("")
    screenshot(alice, "web-edit-react-reply")

    mine = message(alice, "Lunch at 12:30?")
    mine.hover()
    mine.get_by_role("button", name="Delete").click()
    mine.get_by_role("button", name="Delete for everyone?").click()
    for page in (alice, bob):
        expect(page.locator("#messages .msg").first.locator(".body")).to_have_text(
            "message deleted"
        )


def test_a_failed_answer_shows_its_reason(people: People, web_server: ServerProcess) -> None:
    alice = people.join("Alice", "broken")
    base = f"{web_server.url}/v1/channels/room:broken/messages"
    robot = {"X-Roomcast-Client-Id": "robot"}
    started = httpx.post(base, headers=robot, json={"data": "Let me che", "streaming": True})
    serial = started.json()["msg_serial"]
    answer = alice.locator(f"#m-{serial}")
    expect(answer).to_have_attribute("data-status", "streaming")
    ended = httpx.patch(
        f"{base}/{serial}",
        headers=robot,
        json={"status": "failed", "extras": {"failure": "model timeout"}},
    )
    assert ended.status_code == 200
    expect(answer.locator(".badge.failed")).to_have_text("failed: model timeout")
    expect(answer.get_by_role("button", name="Stop")).to_have_count(0)
    alice.reload()
    expect(alice.locator(f"#m-{serial} .badge.failed")).to_have_text("failed: model timeout")


def test_boards_are_shared_live(people: People) -> None:
    alice = people.join("Alice", "garden")
    bob = people.join("Bob", "garden")
    alice.get_by_label("New board title").fill("Garden plan")
    alice.get_by_role("button", name="Create", exact=True).click()
    expect(bob.locator(".board h3")).to_have_text("Garden plan")
    bob.get_by_label("Add to Garden plan").fill("tomatoes by the fence")
    bob.get_by_label("Add to Garden plan").press("Enter")
    alice.get_by_label("Add to Garden plan").fill("basil")
    alice.get_by_label("Add to Garden plan").press("Enter")
    expect(alice.locator(".board .items li")).to_have_count(2)
    expect(alice.locator(".board .items li").first).to_contain_text("tomatoes by the fence")
    expect(alice.locator(".board .items li").first).to_contain_text("Bob")
    alice.get_by_role("checkbox", name="tomatoes by the fence").check()
    expect(bob.get_by_role("checkbox", name="tomatoes by the fence")).to_be_checked()
    expect(bob.locator(".board .items li.done")).to_have_count(1)
    bob.get_by_role("button", name='Remove "basil"').click()
    expect(alice.locator(".board .items li")).to_have_count(1)


def test_the_rooms_agents_can_be_removed_and_added(people: People) -> None:
    alice = people.join("Alice", "quiet")
    bob = people.join("Bob", "quiet")
    expect(alice.locator("#agents")).to_contain_text("assistant")
    alice.get_by_role("button", name="Remove assistant from this room").click()
    for page in (alice, bob):
        expect(page.locator("#agents")).to_have_text("No agents in this room.")
    send(alice, "@assistant are you there?")
    bob.wait_for_timeout(1500)
    expect(bob.locator('#messages .msg[data-author="assistant"]')).to_have_count(0)
    bob.get_by_label("Add an agent").select_option("assistant")
    bob.get_by_role("button", name="Add", exact=True).click()
    expect(alice.locator("#agents")).to_contain_text("assistant")
    send(alice, "@assistant now?")
    expect(alice.locator('#messages .msg[data-author="assistant"]')).to_have_count(1, timeout=15000)


def test_scrolling_back_loads_earlier_messages(people: People, web_server: ServerProcess) -> None:
    body = json.dumps([{"data": f"old message {n}"} for n in range(1, 121)]).encode()
    request = urllib.request.Request(
        f"{web_server.url}/v1/channels/room:archive/messages",
        data=body,
        headers={"X-Roomcast-Client-Id": "carol", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 200
    alice = people.join("Alice", "archive")
    expect(alice.locator("#messages .msg")).to_have_count(50)
    expect(alice.locator("#messages .msg").last).to_contain_text("old message 120")
    alice.get_by_role("button", name="Load earlier messages").click()
    expect(alice.locator("#messages .msg")).to_have_count(100)
    alice.get_by_role("button", name="Load earlier messages").click()
    expect(alice.locator("#messages .msg")).to_have_count(120)
    expect(alice.locator("#messages .msg").first).to_contain_text("old message 1")
    expect(alice.get_by_role("button", name="Load earlier messages")).to_be_hidden()


def test_a_dropped_connection_resumes_without_losing_messages(people: People) -> None:
    alice = people.join("Alice", "flaky")
    sockets: list[WebSocketRoute] = []
    blocked = {"on": False}

    def relay(ws: WebSocketRoute) -> None:
        if blocked["on"]:
            ws.close(code=1013, reason="try again later")
            return
        ws.connect_to_server()
        sockets.append(ws)

    bob = bob_through(people, "flaky", relay)
    expect(bob.locator("#conn-state")).to_have_text("connected")
    send(alice, "before the drop")
    expect(message(bob, "before the drop")).to_be_visible()

    blocked["on"] = True
    sockets[-1].close(code=4008, reason="dropped by the test")
    expect(bob.locator("#conn-state")).to_have_text("reconnecting…")
    send(alice, "while Bob was away")
    send(alice, "and one more")
    screenshot(bob, "web-reconnecting")
    blocked["on"] = False
    expect(bob.locator("#conn-state")).to_have_text("resumed", timeout=15000)
    expect(message(bob, "and one more")).to_be_visible()
    texts = bob.locator("#messages .msg .body").all_text_contents()
    assert texts == ["before the drop", "while Bob was away", "and one more"]
    expect(alice.locator("#people")).to_contain_text("Bob")
    expect(bob.locator("#people")).to_contain_text("Alice")


def test_events_in_the_frame_of_attached_follow_its_snapshot(people: People) -> None:
    """The server may put ``attached`` and the events after it in one frame. The page
    applies the snapshot first and then those events: none is lost to it. (The relay holds
    the room's ``attached`` until an event comes, and sends both as one frame.)"""
    alice = people.join("Alice", "one-frame")
    send(alice, "one")
    sent_attach: list[bool] = []
    held: list[dict[str, object]] = []
    done: list[bool] = []

    def relay(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def from_page(frame: str | bytes) -> None:
            if isinstance(frame, str) and '"action":"attach"' in frame.replace(" ", ""):
                sent_attach.append(True)
            server.send(frame)

        def from_server(frame: str | bytes) -> None:
            decoded = json.loads(frame)
            items = decoded if isinstance(decoded, list) else [decoded]
            if not done and (held or any(m.get("action") == "attached" for m in items)):
                held.extend(items)
                if not any(m.get("action") == "event" for m in items):
                    return  # held until an event comes
                items = held[:]
                done.append(True)  # only the first attached is held
            ws.send(json.dumps(items))

        ws.on_message(from_page)
        server.on_message(from_server)

    bob = bob_through(people, "one-frame", relay)
    for _ in range(100):
        if sent_attach:
            break
        bob.wait_for_timeout(50)
    assert sent_attach
    send(alice, "two")  # the event the relay sends in one frame with Bob's attached
    expect(message(bob, "two")).to_be_visible()
    texts = bob.locator("#messages .msg .body").all_text_contents()
    assert texts == ["one", "two"]


def test_a_drop_mid_stream_resumes_the_answer_without_doubling(people: People) -> None:
    alice = people.join("Alice", "flaky-stream")
    sockets: list[WebSocketRoute] = []

    def relay(ws: WebSocketRoute) -> None:
        ws.connect_to_server()
        sockets.append(ws)

    bob = bob_through(people, "flaky-stream", relay)
    expect(bob.locator("#conn-state")).to_have_text("connected")
    send(alice, "hello")
    expect(bob.locator("#people")).to_contain_text("assistant")
    watch_answers(bob)
    send(alice, "@assistant pick a place")
    expect(last_answer(bob).locator(".body")).to_contain_text("noodle bar")
    sockets[-1].close(code=4008, reason="dropped by the test")
    expect(bob.locator("#conn-state")).to_have_text("resumed", timeout=15000)
    expect(last_answer(bob)).to_have_attribute("data-status", "complete", timeout=20000)
    assert last_answer(bob).locator(".body").text_content() == ANSWER_TEXT
    texts = [state["text"] for state in answer_states(bob)]
    for shorter, longer in itertools.pairwise(texts):
        assert longer.startswith(shorter), (shorter, longer)


def test_phone_width_and_dark_theme(people: People) -> None:
    alice = people.join("Alice", "phone", width=390, height=780, dark=True)
    send(alice, "Hello from a phone: **bold**, `code` and a list:\n- one\n- two")
    expect(alice.locator("#messages .msg")).to_have_count(1)
    expect(alice.locator("html")).to_have_attribute("data-theme", "dark")
    expect(alice.locator("#side")).to_be_hidden()
    # Nothing is wider than the screen.
    assert alice.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(alice, "web-phone-chat")
    toggle = alice.get_by_role("button", name="People, agents, polls and boards")
    toggle.click()
    expect(alice.locator("#side")).to_be_visible()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    screenshot(alice, "web-phone-side")
    toggle.click()
    alice.get_by_role("button", name="Switch to light theme").click()
    expect(alice.locator("html")).to_have_attribute("data-theme", "light")
    alice.reload()
    expect(alice.locator("html")).to_have_attribute("data-theme", "light")  # remembered


def test_the_name_is_remembered_and_rooms_are_listed(people: People) -> None:
    alice = people.join("Alice", "listed")
    send(alice, "first!")
    alice.get_by_role("link", name="roomcast: all rooms").click()
    expect(alice.get_by_role("link", name="# listed")).to_be_visible()
    expect(alice.locator("#me-name")).to_have_text("Alice")
    screenshot(alice, "web-home")
    alice.get_by_label("New room").fill("brunch")
    alice.get_by_role("button", name="Create").click()
    expect(alice).to_have_url(f"{people.server.url}/#/room/brunch")
    expect(alice.locator("#room-title")).to_have_text("# brunch")
    expect(alice.locator("#people")).to_contain_text("Alice")
    shared = alice.context.new_page()  # a second tab: the same person, remembered
    shared.goto(f"{people.server.url}/#/room/brunch")
    expect(shared.locator("#conn-state")).to_have_text("connected")
    # One person with two connections (and the room's agent).
    expect(shared.locator("#people li:not(.agent)")).to_have_count(1)
    expect(shared.locator("#people li:not(.agent)")).to_contain_text("Alice (you) · 2 tabs")
    screenshot(shared, "web-two-tabs")


def test_leaving_a_room_while_a_message_goes_out_is_quiet(people: People) -> None:
    """The message box's work after the ok (the mention hints) belongs to the room it was
    sent in: leaving the room before the ok comes throws nothing (the crowd checks)."""
    alice = people.join("Alice", "left-early")
    alice.locator("#composer-input").fill("@nobody see you later")
    # Sent and left in one go: the hash change is handled before the ok arrives.
    alice.evaluate(
        "() => { document.getElementById('composer').requestSubmit(); location.hash = '#/'; }"
    )
    expect(alice.get_by_role("link", name="# left-early")).to_be_visible()
    alice.wait_for_timeout(500)  # the ok has come and been handled


def test_a_vote_can_be_taken_back_and_a_poll_closed(people: People) -> None:
    alice = people.join("Alice", "vote-again")
    bob = people.join("Bob", "vote-again")
    alice.get_by_text("New poll").click()
    alice.get_by_label("Question").fill("Tea or coffee?")
    alice.get_by_label("Options (one per line)").fill("tea\ncoffee")
    alice.get_by_role("button", name="Create poll").click()
    bob.get_by_role("button", name="Vote tea").focus()  # by keyboard
    bob.keyboard.press("Enter")
    expect(alice.get_by_role("button", name="Vote tea: 1 vote")).to_be_visible()
    # The chart was rebuilt, and the focus is still on the same option.
    expect(bob.get_by_role("button", name="Vote tea: 1 vote")).to_be_focused()
    bob.get_by_role("button", name="Vote coffee").click()  # a new vote replaces the old
    expect(alice.get_by_role("button", name="Vote coffee: 1 vote")).to_be_visible()
    expect(alice.get_by_role("button", name="Vote tea: 0 votes")).to_be_visible()
    bob.get_by_role("button", name="Vote coffee").click()  # pressed again: taken back
    expect(alice.get_by_role("button", name="Vote coffee: 0 votes")).to_be_visible()
    expect(bob.get_by_role("button", name="close poll")).to_have_count(0)  # not Bob's poll
    alice.get_by_role("button", name="close poll").click()
    expect(bob.locator(".poll-foot")).to_contain_text("closed")
    expect(bob.get_by_role("button", name="Vote tea")).to_be_disabled()


def test_an_agents_name_cannot_be_taken(people: People) -> None:
    context = people.browser.new_context()
    people.contexts.append(context)
    page = context.new_page()
    page.goto(f"{people.server.url}/#/room/lunch")
    page.get_by_label("Your name").fill("assistant")
    page.get_by_role("button", name="Join").click()
    expect(page.locator("#join-error")).to_contain_text('Could not join as "assistant"')
    screenshot(page, "web-join-refused")
    page.get_by_label("Your name").fill("Erin")
    page.get_by_role("button", name="Join").click()
    expect(page.locator("#conn-state")).to_have_text("connected")
    expect(page.locator("#people")).to_contain_text("Erin")
