"""The UI on a server that needs credentials: it gets a token from ``auth_url`` and renews
it on the open connection before it expires."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from browsing import send
from playwright.sync_api import Browser, expect

from roomcast.testing import ServerProcess, free_port

KEY = "site:s3cret"
TTL_S = 4
# What the site grants once the visitor is signed in: no cancel-any, no agent-admin.
NARROW = {"room:*": ["history", "object-subscribe", "presence", "publish", "signal", "subscribe"]}


class TokenService:
    """A site's login endpoint: POST {client_id} → {token}, minted by roomcast's
    ``POST /v1/tokens`` with the site's API key (what a real deployment's backend does)."""

    def __init__(self, roomcast_url: str) -> None:
        self.calls: list[str] = []
        self.capability: dict[str, list[str]] | None = None  # None: the key's
        service = self

        class Handler(BaseHTTPRequestHandler):
            def _cors(self) -> None:
                self.send_header("Access-Control-Allow-Origin", roomcast_url)
                self.send_header("Access-Control-Allow-Credentials", "true")
                self.send_header("Access-Control-Allow-Headers", "Content-Type")
                self.send_header("Access-Control-Allow-Methods", "POST")

            def do_OPTIONS(self) -> None:
                self.send_response(204)
                self._cors()
                self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                client_id = json.loads(self.rfile.read(length))["client_id"]
                service.calls.append(client_id)
                minted = httpx.post(
                    f"{roomcast_url}/v1/tokens",
                    headers={"Authorization": f"Bearer {KEY}"},
                    json={
                        "client_id": client_id,
                        "ttl_s": TTL_S,
                        **({"capability": service.capability} if service.capability else {}),
                    },
                ).json()
                body = json.dumps({"token": minted["token"]}).encode()
                self.send_response(200)
                self._cors()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> TokenService:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def secured(test_env: dict[str, str]) -> Iterator[tuple[ServerProcess, TokenService]]:
    port = free_port()
    with TokenService(f"http://127.0.0.1:{port}") as tokens:
        args = ["--key", KEY, "--auth-url", tokens.url, "--agents", "none"]
        with ServerProcess(env=test_env, args=args, port=port) as server:
            yield server, tokens


def test_the_ui_signs_in_with_a_token_and_renews_it(
    browser: Browser, secured: tuple[ServerProcess, TokenService]
) -> None:
    server, tokens = secured
    anonymous = httpx.get(f"{server.url}/v1/channels")
    assert anonymous.status_code == 401  # this server has no anonymous access
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{server.url}/#/room/private")
        page.get_by_label("Your name").fill("Dana")
        page.get_by_role("button", name="Join").click()
        expect(page.locator("#conn-state")).to_have_text("connected")
        expect(page.locator("#people")).to_contain_text("Dana")
        send(page, "signed in")
        expect(page.locator("#messages .msg .body")).to_have_text("signed in")
        capability = "window.roomcastApp.client.capability.rules"
        assert page.evaluate(capability) == {"*": ["*"]}  # from connected.capability
        tokens.capability = NARROW  # the renewed tokens grant less: the page knows it
        # Three token lifetimes later the same connection is still up: renewed in place.
        page.wait_for_timeout(TTL_S * 3 * 1000)
        assert len(tokens.calls) >= 3 and set(tokens.calls) == {"Dana"}
        assert page.evaluate(capability) == NARROW
        expect(page.locator("#conn-state")).to_have_text("connected")
        send(page, "still here")
        expect(page.locator("#messages .msg .body")).to_have_text(["signed in", "still here"])
        # The HTTP API (the room list) goes with the token too.
        page.get_by_role("link", name="roomcast: all rooms").click()
        expect(page.get_by_role("link", name="# private")).to_be_visible()
    finally:
        context.close()
