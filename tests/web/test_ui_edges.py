"""Small edges where the page said what was not so: the badge before a join, a refused name
and its toast, the room's name and the new-board box on a phone, and tool lines shown after
the answer rather than where the tool ran."""

from __future__ import annotations

import httpx
from browsing import People, last_answer, screenshot, send
from playwright.sync_api import Locator, Page, expect

from roomcast.testing import ServerProcess

# Whether the text of an element (or, for an input, its placeholder) fits its box.
FITS = """(node) => {
  if (node.tagName !== "INPUT") return node.scrollWidth <= node.clientWidth;
  const style = getComputedStyle(node);
  const context = document.createElement("canvas").getContext("2d");
  context.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
  const room = node.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  return context.measureText(node.placeholder).width <= room;
}"""


def fits(locator: Locator) -> bool:
    result: bool = locator.evaluate(FITS)
    return result


def fresh_page(people: People, room: str, **viewport: int) -> Page:
    context = people.browser.new_context(viewport=viewport or None)  # type: ignore[arg-type]
    people.contexts.append(context)
    page = context.new_page()
    page.on("pageerror", lambda error: people.errors.append(str(error)))
    page.goto(f"{people.server.url}/#/room/{room}")
    return page


def test_the_badge_says_not_connected_until_a_join(people: People) -> None:
    page = fresh_page(people, "badge")
    expect(page.get_by_label("Your name")).to_be_visible()
    expect(page.locator("#conn-state")).to_have_text("not connected")
    page.get_by_label("Your name").fill("Fay")
    page.get_by_role("button", name="Join").click()
    expect(page.locator("#conn-state")).to_have_text("connected")


def test_an_agents_name_is_refused_in_words_and_the_toast_goes(people: People) -> None:
    page = fresh_page(people, "names")
    page.get_by_label("Your name").fill("assistant")
    page.get_by_role("button", name="Join").click()
    expect(page.locator("#join-error")).to_have_text(
        'Could not join as "assistant": that name belongs to an agent; pick another'
    )
    expect(page.locator("#conn-state")).to_have_text("not connected")
    page.get_by_label("Your name").fill("Gus")
    page.get_by_role("button", name="Join").click()
    expect(page.locator("#conn-state")).to_have_text("connected")
    # No "Disconnected" left over from the refused name (a toast stays 5 s by itself).
    expect(page.locator("#toast")).to_be_hidden(timeout=1000)
    expect(page.locator("#people")).to_contain_text("Gus")


def test_a_phone_shows_the_whole_room_name_and_board_box(people: People) -> None:
    alice = people.join("Alice", "newcomers", width=390, height=780)
    title = alice.locator("#room-title")
    expect(title).to_have_text("# newcomers")
    assert fits(title), "the room's name is cut"
    alice.get_by_role("button", name="People, agents, polls and boards").click()
    assert fits(alice.get_by_label("New board title")), "the placeholder is cut"
    screenshot(alice, "web-phone-edges")


def test_the_new_board_box_fits_its_placeholder_on_a_desktop(people: People) -> None:
    alice = people.join("Alice", "boards-box")
    assert fits(alice.get_by_label("New board title")), "the placeholder is cut"


def answer_with_a_tool(server: ServerProcess, room: str, author: str, before: str) -> int:
    """``author`` streams an answer, runs a tool once ``before`` is said, and finishes."""
    base = f"{server.url}/v1/channels/room:{room}/messages"
    who = {"X-Roomcast-Client-Id": author}
    started = httpx.post(base, headers=who, json={"data": before, "streaming": True})
    serial: int = started.json()["msg_serial"]
    tool = {"tool": "vote", "arguments": {"option": "pizza"}, "result": "voted", "error": False}
    extras = {"answer": serial, "at": len(before)}  # code points, as Python counts
    sent = httpx.post(base, headers=who, json={"data": tool, "name": "tool", "extras": extras})
    assert sent.status_code == 200, sent.text
    httpx.post(f"{base}/{serial}/append", headers=who, json={"data": " Done 🎉"})
    httpx.patch(f"{base}/{serial}", headers=who, json={"status": "complete"})
    return serial


def test_a_tool_line_shows_inside_the_answer_where_it_ran(
    people: People, web_server: ServerProcess
) -> None:
    alice = people.join("Alice", "tools")
    before = "🍕 I will vote for pizza."  # the emoji is one code point, two UTF-16 units
    serial = answer_with_a_tool(web_server, "tools", "robot", before)
    answer = alice.locator(f"#m-{serial}")
    expect(answer).to_have_attribute("data-status", "complete")
    body = answer.locator(".body")
    expect(body.locator(":scope > *")).to_have_count(3)
    expect(body.locator(":scope > *").nth(0)).to_have_text(before)
    expect(body.locator(":scope > .tool-line")).to_contain_text('used vote {"option":"pizza"}')
    expect(body.locator(":scope > *").nth(2)).to_have_text("Done 🎉")
    expect(alice.locator("#messages .msg.tool")).to_have_count(0)  # not again on its own
    alice.reload()
    expect(alice.locator(f"#m-{serial} .body > .tool-line")).to_have_count(1)
    expect(alice.locator("#messages .msg.tool")).to_have_count(0)


def test_tool_lines_without_an_answer_of_their_author_stand_alone(
    people: People, web_server: ServerProcess
) -> None:
    alice = people.join("Alice", "loose-tools")
    base = f"{web_server.url}/v1/channels/room:loose-tools/messages"
    robot = {"X-Roomcast-Client-Id": "robot"}
    mine = httpx.post(base, headers=robot, json={"data": "An answer."}).json()["msg_serial"]
    tool = {"tool": "vote", "arguments": {}, "result": "ok", "error": False}
    httpx.post(base, headers=robot, json={"data": tool, "name": "tool"})  # no extras
    other = {"X-Roomcast-Client-Id": "mallory"}
    claims = {"answer": mine, "at": 3}  # someone else's tool line cannot go into it
    httpx.post(base, headers=other, json={"data": tool, "name": "tool", "extras": claims})
    expect(alice.locator("#messages .msg.tool")).to_have_count(2)
    expect(alice.locator(f"#m-{mine} .body")).to_have_text("An answer.")


def test_the_agents_tool_call_shows_inside_its_answer(people: People) -> None:
    alice = people.join("Alice", "agent-tools")
    alice.get_by_text("New poll").click()
    alice.get_by_label("Question").fill("Lunch?")
    alice.get_by_label("Options (one per line)").fill("pizza\nsushi")
    alice.get_by_role("button", name="Create poll").click()
    send(alice, "@assistant please vote")
    answer = last_answer(alice)
    expect(answer).to_have_attribute("data-status", "complete", timeout=20000)
    parts = answer.locator(".body > *")
    expect(parts).to_have_count(3)
    expect(parts.nth(0)).to_have_text("[scripted] I will vote for pizza.")
    expect(parts.nth(1)).to_contain_text("used vote")
    expect(parts.nth(2)).to_have_text("Done: I voted for pizza.")
    screenshot(alice, "web-tool-in-answer")


def test_a_polls_bars_show_its_votes(people: People) -> None:
    alice = people.join("Alice", "bars")
    alice.get_by_text("New poll").click()
    alice.get_by_label("Question").fill("Tea or coffee?")
    alice.get_by_label("Options (one per line)").fill("tea\ncoffee")
    alice.get_by_role("button", name="Create poll").click()
    alice.get_by_role("button", name="Vote tea").click()
    expect(alice.get_by_role("button", name="Vote tea: 1 vote")).to_be_visible()
    # The page's CSP refuses style attributes: the bar's width goes through the CSSOM.
    widths = alice.locator(".vote .bar").evaluate_all(
        "(bars) => bars.map((bar) => bar.getBoundingClientRect().width)"
    )
    tea = alice.locator(".vote").first.evaluate("(node) => node.getBoundingClientRect().width")
    assert widths[0] > tea * 0.9 and widths[1] == 0, (widths, tea)


def test_an_agents_no_answer_marker_is_not_shown_as_a_message(
    people: People, web_server: ServerProcess
) -> None:
    """An `agent.silent` marker only tells streams that wait for an agent that it will not
    answer; the room shows nothing for it."""
    alice = people.join("Alice", "silent")
    base = f"{web_server.url}/v1/channels/room:silent/messages"
    who = {"X-Roomcast-Client-Id": "robot"}
    marker = httpx.post(base, headers=who, json={"data": "not asked", "name": "agent.silent"})
    after = httpx.post(base, headers=who, json={"data": "a message after it"})
    expect(alice.locator(f"#m-{after.json()['msg_serial']}")).to_contain_text("a message after")
    expect(alice.locator(f"#m-{marker.json()['msg_serial']}")).to_have_count(0)
