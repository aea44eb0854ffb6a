"""The product at a glance: a busy room at desktop width (light) and phone width (dark).
The README and docs/web.md show these screenshots; refresh them with

    pytest tests/web/test_screenshots.py
    for name in desktop phone-chat phone-side; do
        cp test-results/readme-$name.png docs/images/web-$name.png
    done
"""

from __future__ import annotations

from browsing import People, last_answer, screenshot, send
from playwright.sync_api import expect


def test_screenshots_of_a_busy_room(people: People) -> None:
    alice = people.join("Alice", "team-lunch")
    bob = people.join("Bob", "team-lunch")
    send(alice, "Hi all! Where do we go for lunch today?")
    send(bob, "Somewhere **quick**, I have a call at 1:30")
    expect(alice.locator("#people")).to_contain_text("assistant")
    alice.get_by_text("New poll").click()
    alice.get_by_label("Question").fill("Lunch on Friday?")
    alice.get_by_label("Options (one per line)").fill("pizza\nsushi\nnoodle bar")
    alice.get_by_role("button", name="Create poll").click()
    bob.get_by_role("button", name="Vote sushi").click()
    alice.get_by_role("button", name="Vote noodle bar").click()
    alice.get_by_label("New board title").fill("Things to bring")
    alice.get_by_role("button", name="Create", exact=True).click()
    for item in ("umbrella", "team card for Sam"):
        alice.get_by_label("Add to Things to bring").fill(item)
        alice.get_by_label("Add to Things to bring").press("Enter")
    expect(alice.locator(".board .items li")).to_have_count(2)
    alice.get_by_role("checkbox", name="umbrella").check()
    send(bob, "@assistant pick a place")
    expect(last_answer(alice)).to_have_attribute("data-status", "complete", timeout=20000)
    send(alice, "@assistant vote too")  # its vote shows inside its answer
    expect(last_answer(alice).locator(".tool-line")).to_contain_text("vote", timeout=20000)
    expect(last_answer(alice)).to_have_attribute("data-status", "complete", timeout=20000)
    reaction_target = alice.locator("#messages .msg").nth(1)
    reaction_target.hover()
    reaction_target.get_by_role("button", name="React", exact=True).click()
    reaction_target.get_by_role("button", name="React with 👍").click()
    expect(bob.locator("#messages .reaction")).to_have_text("👍 1")
    bob.get_by_label("Message", exact=True).press_sequentially("sounds good")
    expect(alice.locator("#typing")).to_have_text("Bob is typing…")
    alice.mouse.move(0, 0)
    alice.evaluate("document.activeElement.blur()")
    alice.wait_for_timeout(300)  # the message toolbar fades out
    screenshot(alice, "readme-desktop")

    phone = people.join("Carol", "team-lunch", width=390, height=780, dark=True)
    expect(phone.locator("#messages .msg").last).to_contain_text("Done: I voted for pizza.")
    phone.mouse.move(0, 0)  # no message hovered, no focus ring: the room as one reads it
    phone.evaluate("document.activeElement.blur()")
    phone.evaluate("document.getElementById('scroller').scrollTop = 1e9")
    phone.wait_for_timeout(300)  # the message toolbar fades out
    screenshot(phone, "readme-phone-chat")
    phone.get_by_role("button", name="People, agents, polls and boards").click()
    screenshot(phone, "readme-phone-side")
