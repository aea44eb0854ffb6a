"""The HTTP API against its own OpenAPI document (/openapi.json), with schemathesis: requests
generated from the document, valid ones and invalid ones, sent with an API key to a real
`roomcast serve`. No response is ever a 5xx, every response matches its documented status,
content type, headers and schema, what the document calls valid is accepted and what it
calls invalid is refused."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from roomcast.testing import ServerProcess

KEY = "ops:" + "q" * 32
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON_TYPE = {"Content-Type": "application/json"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    positive_data_acceptance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def api_server(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    env = {**test_env, "ROOMCAST_KEYS": KEY, "ROOMCAST_AGENTS": "none"}
    with ServerProcess(store="memory://", env=env) as proc:
        yield proc


@pytest.fixture(scope="module")
def api_schema(api_server: ServerProcess) -> Any:
    return schemathesis.openapi.from_url(api_server.url + "/openapi.json")


# Not plain HTTP: the WebSocket upgrade, and an endless event stream (tests/server/test_sse.py).
schema = (
    schemathesis.pytest.from_fixture("api_schema")
    .exclude(path="/v1/ws")
    .exclude(path_regex=r"/events$")
)


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_keeps_the_promises_of_its_document(case: Any, api_server: ServerProcess) -> None:
    query = case.query or {}
    if case.operation.path.endswith("/messages") and case.method == "GET":
        if query.get("before") is not None and query.get("after") is not None:
            # docs/protocol.md §2: `before` and `after` together are 40000, a rule between two
            # parameters that OpenAPI has no way to state; check it here instead.
            response = case.call(base_url=api_server.url, headers=AUTH, timeout=10)
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == 40000
            return
    case.call_and_validate(base_url=api_server.url, headers=AUTH, checks=CHECKS, timeout=10)


# What schemathesis found, each pinned by a direct test.


def test_a_wrong_method_gets_405_listing_every_method_of_the_path(
    api_server: ServerProcess,
) -> None:
    with httpx.Client(base_url=api_server.url, headers=AUTH) as http:
        response = http.request("OPTIONS", "/v1/channels/room:a/messages")
        assert response.status_code == 405
        assert {m.strip() for m in response.headers["Allow"].split(",")} >= {"GET", "POST"}
        assert response.json()["error"]["code"] == 40500
        response = http.put("/v1/channels/room:a/messages/1")
        assert {m.strip() for m in response.headers["Allow"].split(",")} == {"PATCH", "DELETE"}


def test_integer_fields_take_integral_json_numbers(api_server: ServerProcess) -> None:
    with httpx.Client(base_url=api_server.url, headers=AUTH) as http:
        token = http.post(
            "/v1/tokens", content=b'{"client_id": "a", "ttl_s": 60.0}', headers=JSON_TYPE
        )
        assert token.status_code == 200, token.text
        fraction = http.post(
            "/v1/tokens", content=b'{"client_id": "a", "ttl_s": 60.5}', headers=JSON_TYPE
        )
        assert fraction.status_code == 400
        # Data keeps its numbers as they were sent.
        http.post("/v1/channels/room:floats/messages", content=b'{"data": 2.0}', headers=JSON_TYPE)
        items = http.get("/v1/channels/room:floats/messages").json()["items"]
        assert items[-1]["data"] == 2.0 and isinstance(items[-1]["data"], float)


def test_empty_parameters_are_not_absent(api_server: ServerProcess) -> None:
    with httpx.Client(base_url=api_server.url, headers=AUTH) as http:
        assert http.get("/v1/channels/room:a/messages?limit=").status_code == 400
        assert http.get("/v1/channels", params={"client_id": ""}).status_code == 400
        assert http.get("/v1/channels", headers={"X-Roomcast-Client-Id": ""}).status_code == 400
        assert http.get("/v1/channels", params={"prefix": ""}).status_code == 200


def test_every_reference_in_the_document_resolves(api_server: ServerProcess) -> None:
    with httpx.Client(base_url=api_server.url) as http:
        document = http.get("/openapi.json").json()
    refs = set(re.findall(r'"\$ref":\s*"#/components/schemas/([^"]+)"', json.dumps(document)))
    assert refs and refs <= set(document["components"]["schemas"])
    update = document["components"]["schemas"]["UpdateBody"]
    assert {tuple(rule["required"]) for rule in update["anyOf"]} == {
        ("data",),
        ("extras",),
        ("status",),
    }
