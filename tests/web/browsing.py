"""Helpers of the web UI's browser tests: people in browser contexts, screenshots."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect

from roomcast.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "test-results"


class People:
    """Opens one browser context (a person) per name, on a desktop-sized window."""

    def __init__(self, browser: Browser, server: ServerProcess) -> None:
        self.browser = browser
        self.server = server
        self.contexts: list[BrowserContext] = []
        self.errors: list[str] = []

    def join(
        self, name: str, room: str, *, width: int = 1280, height: int = 800, dark: bool = False
    ) -> Page:
        context = self.browser.new_context(
            viewport={"width": width, "height": height},
            color_scheme="dark" if dark else "light",
        )
        self.contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: self.errors.append(f"[{name}] {error}"))
        page.goto(f"{self.server.url}/#/room/{room}")
        page.get_by_label("Your name").fill(name)
        page.get_by_role("button", name="Join").click()
        expect(page.locator("#conn-state")).to_have_text("connected")
        expect(page.locator("#people")).to_contain_text(name)
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()

    def check(self) -> None:
        """Fail if a page threw an uncaught error."""
        assert self.errors == [], self.errors


@contextlib.contextmanager
def crowd(browser: Browser, server: ServerProcess) -> Iterator[People]:
    """People on ``server``; on the way out, their contexts close and no page may have
    thrown an uncaught error."""
    people = People(browser, server)
    try:
        yield people
    finally:
        people.close()
    people.check()


def screenshot(page: Page, name: str) -> None:
    """Save ``test-results/<name>.png`` (a test artifact)."""
    RESULTS.mkdir(exist_ok=True)
    page.screenshot(path=str(RESULTS / f"{name}.png"))


def send(page: Page, text: str) -> None:
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")


# Records, in a page, each text the newest answer of `author` shows while it streams: a
# MutationObserver on the message list sees every re-render.
WATCH_ANSWER = """(author) => {
  window.answerStates = [];
  const read = () => {
    const answers = document.querySelectorAll(`#messages .msg[data-author="${author}"]:not(.tool)`);
    const last = answers[answers.length - 1];
    if (!last) return;
    const text = last.querySelector(".body").textContent;
    const states = window.answerStates;
    if (!states.length || states[states.length - 1].text !== text) {
      states.push({ text, status: last.dataset.status, serial: last.dataset.serial });
    }
  };
  new MutationObserver(read).observe(document.getElementById("messages"), {
    childList: true, subtree: true, characterData: true,
  });
}"""


def watch_answers(page: Page, author: str = "assistant") -> None:
    page.evaluate(WATCH_ANSWER, author)


def answer_states(page: Page) -> list[dict[str, str]]:
    states: list[dict[str, str]] = page.evaluate("window.answerStates")
    return states


def last_answer(page: Page, author: str = "assistant") -> Locator:
    return page.locator(f'#messages .msg[data-author="{author}"]:not(.tool)').last


def start_long_answer(page: Page) -> Locator:
    """Once the agent is in the room, ask it for the long story; its answer, streaming."""
    send(page, "hello")
    expect(page.locator("#people")).to_contain_text("assistant")
    send(page, "@assistant tell us a long story")
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-status", "streaming")
    # That answer, not whichever is last later: a queued answer starts as soon as it ends.
    serial = answer.get_attribute("data-serial")
    return page.locator(f'#messages .msg[data-serial="{serial}"]')
