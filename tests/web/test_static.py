"""The UI's files are served by ``roomcast serve`` (no browser needed): content types,
cache headers, and no clash with the API's routes."""

from __future__ import annotations

import httpx
import pytest

from roomcast.testing import ServerProcess

FILES = {
    "/static/app.js": "text/javascript; charset=utf-8",
    "/static/roomcast.js": "text/javascript; charset=utf-8",
    "/static/markdown.js": "text/javascript; charset=utf-8",
    "/static/side.js": "text/javascript; charset=utf-8",
    "/static/dom.js": "text/javascript; charset=utf-8",
    "/static/style.css": "text/css; charset=utf-8",
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
        page = httpx.get(server.url + "/").text
    escaped = "https://login.example.com/token?a=1&amp;b=&quot;2&quot;"
    assert f'<meta name="roomcast-auth-url" content="{escaped}">' in page
