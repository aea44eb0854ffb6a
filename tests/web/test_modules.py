"""The browser modules on their own: the docs' ``roomcast.js`` example runs as written, a
channel asks for some event types only, the Markdown renderer makes only safe elements, and no
module is over 600 lines (that only the client library calls the server is a rule of
tests/test_layering.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page

from roomcast.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "web.md"
WEB = ROOT / "src" / "roomcast" / "web"
MAX_LINES = 600


@pytest.fixture
def blank(browser: Browser, web_server: ServerProcess) -> Iterator[Page]:
    """A page of the server (its origin and address space) without the UI's app.js."""
    context = browser.new_context(bypass_csp=True)  # the example is an inline script
    page = context.new_page()
    page.route("**/static/app.js", lambda route: route.abort())
    page.goto(f"{web_server.url}/")
    try:
        yield page
    finally:
        context.close()


def test_the_docs_example_runs(blank: Page, web_server: ServerProcess) -> None:
    html = re.search(r"```html\n(.*?)```", DOC.read_text(), re.S)
    assert html is not None
    code = re.sub(r"</?script[^>]*>", "", html.group(1))
    code = code.replace("127.0.0.1:8000", f"127.0.0.1:{web_server.port}")
    blank.add_script_tag(content=code + "\nwindow.exampleDone = true;\n", type="module")
    blank.wait_for_function("window.exampleDone === true")
    history = httpx.get(f"{web_server.url}/v1/channels/room:lunch/messages").json()
    assert any(m["data"] == "tacos?" and m["client_id"] == "alice" for m in history["items"])
    presence = httpx.get(f"{web_server.url}/v1/channels/room:lunch/presence").json()
    assert any(p["client_id"] == "alice" for p in presence["items"])


TYPES = """async ([url, channel]) => {
  const { Client } = await import("/static/roomcast.js");
  const reader = new Client({ url, clientId: "reader" });
  const writer = new Client({ url, clientId: "writer" });
  await Promise.all([reader.connect(), writer.connect()]);
  const room = reader.channel(channel);
  const seen = [];
  room.on("event", (event) => seen.push(event.type));
  await room.attach({ types: ["create", "update"] });
  const out = writer.channel(channel);
  const serial = await out.publish("", { streaming: true });
  for (const word of ["one", " two", " three"]) await out.append(serial, word);
  await out.update(serial, { status: "complete" });
  await out.publish("after");
  while (seen.length < 3) await new Promise((resolve) => setTimeout(resolve, 10));
  reader.close();
  writer.close();
  return { seen, types: room.types };
}"""


def test_attach_asks_for_some_event_types(blank: Page, web_server: ServerProcess) -> None:
    url = f"ws://127.0.0.1:{web_server.port}/v1/ws"
    result = blank.evaluate(TYPES, [url, "room:types-js"])
    assert result == {"seen": ["create", "update", "create"], "types": ["create", "update"]}


RENDER = """async (texts) => {
  const { renderMarkdown } = await import("/static/markdown.js");
  return texts.map((text) => {
    const box = document.createElement("div");
    box.append(renderMarkdown(text));
    return box.innerHTML;
  });
}"""

CASES = {
    "<img src=x onerror=alert(1)>": "<p>&lt;img src=x onerror=alert(1)&gt;</p>",
    "**bold** and *it* and `x<y`": (
        "<p><strong>bold</strong> and <em>it</em> and <code>x&lt;y</code></p>"
    ),
    "[site](https://example.com/a?b=1)": (
        '<p><a href="https://example.com/a?b=1" target="_blank" '
        'rel="noopener noreferrer nofollow">site</a></p>'
    ),
    "[bad](javascript:alert(1))": "<p>bad)</p>",
    '[q](https://x.org/"onmouseover="alert(1))': (
        '<p><a href="https://x.org/&quot;onmouseover=&quot;alert(1" target="_blank" '
        'rel="noopener noreferrer nofollow">q</a>)</p>'
    ),
    "- one\n- two": "<ul><li>one</li><li>two</li></ul>",
    "```js\n<b>code</b>\n```": '<pre><code data-lang="js">&lt;b&gt;code&lt;/b&gt;</code></pre>',
    "> quoted\n> more\nafter": "<blockquote><p>quoted<br>more</p></blockquote><p>after</p>",
    "first\nsecond\n\nnext": "<p>first<br>second</p><p>next</p>",
}


def test_markdown_is_rendered_without_html(blank: Page) -> None:
    rendered = blank.evaluate(RENDER, list(CASES))
    assert dict(zip(CASES, rendered, strict=True)) == CASES


def test_no_module_is_over_600_lines() -> None:
    sizes = {str(p.relative_to(WEB)): len(p.read_text().splitlines()) for p in WEB.rglob("*.js")}
    assert {name: lines for name, lines in sizes.items() if lines > MAX_LINES} == {}
