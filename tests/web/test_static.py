"""The UI's files are served by ``roomcast serve`` (no browser needed): content types,
cache headers, the page's security headers and icon, and no clash with the API's routes."""

from __future__ import annotations

import httpx
import pytest

from roomcast.server.web import content_security_policy
from roomcast.testing import ServerProcess

FILES = {
    "/static/app.js": "text/javascript; charset=utf-8",
    "/static/roomcast.js": "text/javascript; charset=utf-8",
    "/static/markdown.js": "text/javascript; charset=utf-8",
    "/static/side.js": "text/javascript; charset=utf-8",
    "/static/dom.js": "text/javascript; charset=utf-8",
    "/static/style.css": "text/css; charset=utf-8",
    "/static/favicon.svg": "image/svg+xml",
    "/static/roomcast.d.ts": "text/plain; charset=utf-8",
}


def test_the_page_and_its_modules_are_served(server: ServerProcess) -> None:
    page = httpx.get(server.url + "/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    assert page.headers["x-frame-options"] == "DENY"
    assert '<script type="module" src="/static/app.js">' in page.text
    assert '<meta name="roomcast-auth-url" content="">' in page.text  # no auth_url set
    for path, content_type in FILES.items():
        response = httpx.get(server.url + path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == content_type, path
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        etag = response.headers["etag"]
        again = httpx.get(server.url + path, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
    head = httpx.head(server.url + "/static/roomcast.js")
    assert head.status_code == 200


@pytest.mark.parametrize("path", ["/static/nope.js", "/static/../settings.py", "/index.html"])
def test_other_paths_are_not_found(server: ServerProcess, path: str) -> None:
    response = httpx.get(server.url + path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == 40400


def test_the_client_library_modules_are_served_from_their_folder(server: ServerProcess) -> None:
    for path in ["/static/roomcast/link.js", "/static/roomcast/http.js"]:
        response = httpx.get(server.url + path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == "text/javascript; charset=utf-8"
        assert response.headers["x-content-type-options"] == "nosniff"
        again = httpx.get(server.url + path, headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304
    for path in ["/static/roomcast/nope.js", "/static/nope/link.js", "/static/roomcast/a/link.js"]:
        response = httpx.get(server.url + path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == 40400
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert paths["/static/{folder}/{name}"]["get"]["tags"] == ["web"]


def test_the_api_is_not_shadowed(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    channels = httpx.get(server.url + "/v1/channels")
    assert channels.status_code == 200 and "items" in channels.json()
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert paths["/"]["get"]["tags"] == ["web"]
    assert paths["/static/{name}"]["get"]["tags"] == ["web"]


def test_the_auth_url_is_put_in_the_page(test_env: dict[str, str]) -> None:
    url = 'https://login.example.com/token?a=1&b="2"'
    with ServerProcess(env=test_env, args=["--auth-url", url, "--agents", "none"]) as server:
        page = httpx.get(server.url + "/")
    escaped = "https://login.example.com/token?a=1&amp;b=&quot;2&quot;"
    assert f'<meta name="roomcast-auth-url" content="{escaped}">' in page.text
    policy = directives(page.headers["content-security-policy"])
    assert "https://login.example.com" in policy["connect-src"]  # the page gets tokens there


def directives(policy: str) -> dict[str, list[str]]:
    """A Content-Security-Policy header as {directive: [sources]}."""
    parsed = [part.split() for part in policy.split(";") if part.strip()]
    return {words[0]: words[1:] for words in parsed}


def test_the_page_has_a_strict_content_security_policy(server: ServerProcess) -> None:
    page = httpx.get(server.url + "/")
    policy = directives(page.headers["content-security-policy"])
    host = f"127.0.0.1:{server.port}"
    assert policy == {
        "default-src": ["'self'"],
        "script-src": ["'self'"],  # no inline script, no eval
        "style-src": ["'self'"],  # no inline style markup
        "img-src": ["'self'"],
        "connect-src": ["'self'", f"ws://{host}", f"wss://{host}"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "<script>" not in page.text and " style=" not in page.text
    assert " onclick=" not in page.text and " onload=" not in page.text
    again = httpx.get(server.url + "/", headers={"If-None-Match": page.headers["etag"]})
    assert again.status_code == 304
    assert again.headers["content-security-policy"] == page.headers["content-security-policy"]


def test_a_host_header_that_is_not_a_host_stays_out_of_the_policy() -> None:
    hostile = "example.com; script-src *"
    assert "script-src *" not in content_security_policy(hostile)
    assert "connect-src 'self';" in content_security_policy(hostile)
    assert "connect-src 'self' ws://[::1]:80 wss://[::1]:80;" in content_security_policy("[::1]:80")
    auth = content_security_policy("a.example", "https://user:pw@login.example:8443/token")
    assert "connect-src 'self' ws://a.example wss://a.example https://login.example:8443;" in auth
    assert "login" not in content_security_policy("a.example", "/token")  # the page's own origin


def test_the_icon_is_served_and_linked(server: ServerProcess) -> None:
    page = httpx.get(server.url + "/").text
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in page
    icon = httpx.get(server.url + "/favicon.ico")  # browsers and tools ask here regardless
    assert icon.status_code == 200
    assert icon.headers["content-type"] == "image/x-icon"
    assert icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO file
    assert icon.content[22:30] == b"\x89PNG\r\n\x1a\n"  # holding a PNG
    again = httpx.get(server.url + "/favicon.ico", headers={"If-None-Match": icon.headers["etag"]})
    assert again.status_code == 304
    svg = httpx.get(server.url + "/static/favicon.svg")
    assert svg.text.startswith("<svg") and 'viewBox="0 0 32 32"' in svg.text
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert paths["/favicon.ico"]["get"]["tags"] == ["web"]
