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

from roomcast.protocol.messages import check_value
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
    schema = schemathesis.openapi.from_url(api_server.url + "/openapi.json")

    @schema.hook
    def filter_body(context: Any, body: Any) -> bool:
        # docs/protocol.md §2 Values: integers in `data` and `extras` stay within 64 bits, a
        # rule for values of any shape that the document has no way to state. Bodies generated
        # here keep to it; test_values_no_store_or_format_holds_... sends those that do not.
        try:
            check_value(body, "body")
        except (TypeError, ValueError):
            return False
        return True

    return schema


# Not plain HTTP: the WebSocket upgrade, an endless event stream (tests/server/test_sse.py),
# and MCP, JSON-RPC with errors of its own (tests/server/test_mcp.py and the official
# conformance suite, tests/ecosystem/test_mcp_conformance.py).
schema = (
    schemathesis.pytest.from_fixture("api_schema")
    .exclude(path="/v1/ws")
    .exclude(path_regex=r"/events$")
    .exclude(path="/mcp")
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


# Values the document cannot rule out in a schema (`data` may be any JSON), and the numbers its
# bounds rule out, put into requests it generates for every channel operation: each is refused
# with 40000 (docs/protocol.md §2 Frames), never a 5xx.
POISONS = {
    "an integer beyond 64 bits": str(2**64),
    "a number too large for a double": "1e400",
    "nesting 100 deep": "[" * 100 + "]" * 100,
    "nesting 5,000 deep": "[" * 5000 + "]" * 5000,
}
MARK = "@@poison@@"
VALUES = {"data", "value", "amount"}  # fields that hold any value; these hold an object:
OBJECTS = {"extras", "entries"}
NUMBERS = {"msg_serial", "before", "after", "from_serial", "limit"}  # path and query


def _poisoned(item: Any) -> Any:
    if isinstance(item, list):
        return [_poisoned(v) for v in item]
    if not isinstance(item, dict):
        return item
    out = {k: _poisoned(v) for k, v in item.items()}
    out.update({k: MARK for k in VALUES & set(item)})
    out.update({k: {"k": MARK} for k in OBJECTS & set(item)})
    return out


@schema.include(path_regex=r"^/v1/channels/").parametrize()
@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_values_no_store_or_format_holds_are_refused_by_every_operation(
    case: Any, api_server: ServerProcess
) -> None:
    if case.method.upper() != case.operation.method.upper():
        return  # a wrong method, tested above
    path = {**(case.path_parameters or {})}
    query = {**(case.query or {})}
    for where in (path, query):
        where.update({k: str(2**63) for k in NUMBERS & set(where)})
    text = json.dumps(_poisoned(case.body)) if isinstance(case.body, dict | list) else None
    if MARK not in (text or "") and path == case.path_parameters and query == case.query:
        return  # nothing in this request to poison
    url = api_server.url + case.path.format(**path)
    with httpx.Client(headers=AUTH, timeout=10) as http:
        for poison in POISONS.values():
            content = text.replace(f'"{MARK}"', poison) if text else None
            response = http.request(
                case.method, url, params=query, content=content, headers=JSON_TYPE
            )
            # (A large batch, each of its messages 5,000 deep, is over the body limit.)
            assert response.status_code in (400, 413), (case.method, url, response.text)
            assert response.json()["error"]["code"] == response.status_code * 100


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
