"""The page works under its own Content-Security-Policy: chromium reports no violation (and
no failed load) while a person joins, chats, gets a streamed answer and switches the theme."""

from __future__ import annotations

from browsing import last_answer, send
from playwright.sync_api import Browser, ConsoleMessage, Response, expect

from roomcast.testing import ServerProcess

# Every violation the page meets, as the browser reports it to the page (this script is
# injected by the browser's debugging protocol: the policy does not apply to it).
RECORD_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.cspViolations.push(`${event.effectiveDirective} blocked ${event.blockedURI || "inline"}`);
});
"""


def test_the_page_works_under_its_policy(browser: Browser, web_server: ServerProcess) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    failed: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    def on_response(response: Response) -> None:
        if response.status >= 400:
            failed.append(f"{response.status} {response.url}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("response", on_response)
    page.add_init_script(RECORD_VIOLATIONS)
    try:
        loaded = page.goto(f"{web_server.url}/#/room/policy")
        assert loaded is not None
        assert "default-src 'self'" in loaded.headers["content-security-policy"]
        page.get_by_label("Your name").fill("Alice")
        page.get_by_role("button", name="Join").click()
        expect(page.locator("#conn-state")).to_have_text("connected")  # the WebSocket
        expect(page.locator("#people")).to_contain_text("Alice")
        box = page.get_by_label("Message", exact=True)
        box.fill("a long message\nover\nseveral\nlines")  # the box grows: a style from JS
        assert box.evaluate("(node) => node.style.height") != ""
        send(page, "@assistant where for lunch?")
        expect(last_answer(page)).to_have_attribute("data-status", "complete", timeout=20000)
        expect(page.locator("#messages .msg .avatar").first).to_be_visible()
        page.locator("#theme-toggle").click()
        expect(page.locator("html")).to_have_attribute("data-theme", "dark")
        icon = page.evaluate("fetch('/favicon.ico').then((r) => r.status)")
        assert icon == 200
        assert page.evaluate("window.cspViolations") == []
        assert [e for e in errors if "Content Security Policy" in e] == []
        assert errors == []
        assert failed == []
    finally:
        context.close()
