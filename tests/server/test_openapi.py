"""``/openapi.json``: a valid OpenAPI 3.1 document of exactly the routes the app serves,
with schemas taken from the protocol types."""

from __future__ import annotations

import re
from typing import Any

import httpx
import msgspec
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route, WebSocketRoute

from roomcast.protocol.http import ENVELOPE
from roomcast.protocol.messages import Publish, Update
from roomcast.server import create_app
from roomcast.settings import Settings
from roomcast.testing import ServerProcess, WireClient

METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def document(server: ServerProcess) -> dict[str, Any]:
    with httpx.Client(base_url=server.url) as http:
        response = http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    doc: dict[str, Any] = response.json()
    return doc


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }


def served() -> set[tuple[str, str]]:
    app = create_app(Settings(store="memory://"), manage_node=False)
    out: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, WebSocketRoute):
            out.add(("GET", route.path))
        elif isinstance(route, Route):
            out |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
    return out


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_documented_route_is_served_and_every_route_documented(
    document: dict[str, Any],
) -> None:
    paths = documented(document)
    assert paths == served()
    for expected in [
        ("POST", "/v1/channels/{channel}/messages"),
        ("GET", "/v1/channels/{channel}/events"),
        ("GET", "/v1/ws"),
        ("GET", "/metrics"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/openapi.json"),
    ]:
        assert expected in paths


async def test_every_documented_route_answers_on_a_real_server(
    server: ServerProcess, document: dict[str, Any]
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        await http.post("/v1/channels/room:probe/messages", json={"data": "", "streaming": True})
        for method, path in sorted(documented(document)):
            url = path.replace("{channel}", "room:probe").replace("{msg_serial}", "1")
            if path == "/v1/ws":
                ws = await WireClient.connect(server.ws_url, client_id="probe")
                assert ws.connected["action"] == "connected"
                await ws.close()
                continue
            async with http.stream(method, url, json={}) as response:
                if response.headers.get("content-type", "").startswith("text/event-stream"):
                    continue  # the stream answered; closing it is enough
                await response.aread()
            if response.status_code >= 400:
                error = response.json()["error"]
                assert not error["message"].startswith("no route"), (method, path, error)
                assert error["code"] not in (40500, 50000), (method, path, error)


def test_bodies_are_the_websocket_requests_without_the_envelope(
    document: dict[str, Any],
) -> None:
    schemas = document["components"]["schemas"]
    for request, name in [(Publish, "PublishBody"), (Update, "UpdateBody")]:
        own = msgspec.json.schema(request)["$defs"][request.__name__]["properties"]
        assert set(schemas[name]["properties"]) == set(own) - ENVELOPE
        assert {"action", "ref", "channel"}.isdisjoint(schemas[name]["properties"])
    publish = document["paths"]["/v1/channels/{channel}/messages"]["post"]
    one_or_many = publish["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert one_or_many[0] == {"$ref": "#/components/schemas/PublishBody"}
    assert one_or_many[1]["type"] == "array" and one_or_many[1]["maxItems"] == 1000
    for name in ("Message", "Event", "ErrorBody", "MessagePage", "ChannelPage"):
        assert name in schemas


def test_every_ref_resolves(document: dict[str, Any]) -> None:
    text = msgspec.json.encode(document).decode()
    refs = set(re.findall(r'"\$ref":"#/components/schemas/([^"]+)"', text))
    assert refs and refs <= set(document["components"]["schemas"])
