"""``/openapi.json``: an OpenAPI 3.1 document of every route, built from the operation table
(:mod:`roomcast.server.api`) and the msgspec types the handlers decode and encode.

Nothing here restates a type: schemas come from :func:`msgspec.json.schema_components`. A
request body's schema is its WebSocket request's schema without the envelope and URL
fields (``PublishBody`` is ``Publish`` without ``action``, ``ref`` and ``channel``), as the
handlers convert it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from starlette.responses import Response

from roomcast import __version__
from roomcast.protocol.capabilities import OPERATIONS
from roomcast.protocol.http import ENVELOPE, MAX_BATCH, ErrorBody, TokenRequest
from roomcast.protocol.messages import (
    CHANNEL_PATTERN,
    Attached,
    Discontinuity,
    Event,
    PresenceEvent,
    Publish,
    SignalEvent,
    Update,
)

from .ag_ui import RunInput, run_input_schema
from .api import Api, Call, Operation, Returns
from .auth import CLIENT_ID_HEADER

api = Api()

REF = "#/components/schemas/{name}"

# Types a client meets that no operation returns as JSON: the `data` of SSE events.
STREAM_TYPES: tuple[type[msgspec.Struct], ...] = (
    Attached,
    Event,
    Discontinuity,
    PresenceEvent,
    SignalEvent,
)

TAGS = [
    {"name": "messages", "description": "Publish, read and change messages (docs/protocol.md §3)."},
    {"name": "channels", "description": "Channels, presence, and Server-Sent Events."},
    {"name": "tokens", "description": "Tokens signed by API keys (docs/protocol.md §6)."},
    {"name": "websocket", "description": "The realtime protocol (docs/protocol.md §2)."},
    {"name": "operations", "description": "Health, readiness, metrics, this document."},
]

DESCRIPTION = """\
The HTTP side of the roomcast protocol (docs/protocol.md §7). Every `/v1` route takes
`Authorization: Bearer <token or NAME:SECRET>` (SSE also `?token=`). Without credentials a
caller is anonymous when the server allows it (by default only on loopback with no API
keys): it picks its client id with the `X-Roomcast-Client-Id` header or `?client_id=` (else
the server makes one up, `anon-` and 8 hex digits). Missing or invalid credentials are 40100.
Errors are `{"error": {"code", "message", "correlation_id"}}` with HTTP status `code // 100`.
"""


# Rules of a body that its type cannot state and the handler enforces (40000 otherwise), as
# JSON Schema, so that what the document calls valid is what the server accepts.
BODY_RULES: dict[type[msgspec.Struct], dict[str, Any]] = {
    Update: {
        "anyOf": [{"required": ["data"]}, {"required": ["extras"]}, {"required": ["status"]}],
    },
    Publish: {
        "if": {"properties": {"streaming": {"const": True}}, "required": ["streaming"]},
        "then": {"properties": {"data": {"type": "string"}}},
    },
}

# A capability: channel patterns (`*` only as a whole last segment) → known operations.
CAPABILITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "propertyNames": {"pattern": r"^([^*]*|[^*]*:\*|\*)$"},
    "additionalProperties": {
        "type": "array",
        "items": {"enum": sorted(OPERATIONS | {"*"})},
    },
}


def ref(name: str) -> dict[str, Any]:
    return {"$ref": REF.format(name=name)}


def body_name(type_: type[msgspec.Struct]) -> str:
    return type_.__name__ + "Body"


def without_envelope(schema: dict[str, Any], title: str) -> dict[str, Any]:
    """``schema`` (a Struct's) without the fields a body or a query never carries."""
    out = copy.deepcopy(schema)
    out["title"] = title
    out["properties"] = {k: v for k, v in schema.get("properties", {}).items() if k not in ENVELOPE}
    required = [k for k in schema.get("required", []) if k not in ENVELOPE]
    if required:
        out["required"] = required
    else:
        out.pop("required", None)
    return out


def struct_schema(type_: type[msgspec.Struct]) -> dict[str, Any]:
    """The JSON Schema of one Struct, inline (for parameters)."""
    _, components = msgspec.json.schema_components([type_], ref_template=REF)
    schema: dict[str, Any] = components[type_.__name__]
    return schema


def openapi_document(operations: Sequence[Operation]) -> dict[str, Any]:
    response_types = {t for op in operations for r in op.returns for t in r.types}
    response_types |= {ErrorBody, *STREAM_TYPES}
    bodies = sorted({op.body for op in operations if op.body is not None}, key=lambda t: t.__name__)
    # The bodies' own types go in too: a body refers to the types of its fields.
    ordered = sorted(response_types | set(bodies), key=lambda t: t.__name__)
    _, components = msgspec.json.schema_components(ordered, ref_template=REF)
    for body in bodies:
        if body is RunInput:  # AG-UI's own schema, with this server's rules
            schema, referred = run_input_schema()
            components.update(referred)
            components[body_name(body)] = schema
            continue
        schema = without_envelope(components[body.__name__], body_name(body))
        schema.update(copy.deepcopy(BODY_RULES.get(body, {})))
        if body is TokenRequest:
            schema["properties"]["capability"] = {
                **schema["properties"]["capability"],
                **CAPABILITY_SCHEMA,
            }
        components[body_name(body)] = schema
    for body in bodies:  # a request type itself stays only where something refers to it
        if body not in response_types:
            own = components.pop(body.__name__)
            if REF.format(name=body.__name__).encode() in msgspec.json.encode(components):
                components[body.__name__] = own
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "roomcast", "version": __version__, "description": DESCRIPTION},
        "tags": TAGS,
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token, or an API key `NAME:SECRET`.",
                }
            },
        },
    }


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
    }
    if op.description:
        out["description"] = op.description
    params = list(_parameters(op))
    if params:
        out["parameters"] = params
    if op.body is not None:
        schema = ref(body_name(op.body))
        if op.body_many:
            many = {"type": "array", "items": schema, "minItems": 1, "maxItems": MAX_BATCH}
            schema = {"oneOf": [schema, many]}
        out["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": schema}},
        }
    out["responses"] = {r.status: _response(r) for r in op.returns}
    if op.authenticated:
        error = {"application/json": {"schema": ref("ErrorBody")}}
        out["responses"]["4XX"] = {"description": "Refused; see `error.code`.", "content": error}
        out["responses"]["5XX"] = {"description": "Server error.", "content": error}
        out["security"] = [{}, {"bearer": []}]
    return out


def _parameters(op: Operation) -> Iterable[dict[str, Any]]:
    in_path = re.findall(r"{(\w+)}", op.path)
    if in_path:
        assert op.path_params is not None, f"{op.path} needs path_params"
        props = struct_schema(op.path_params)["properties"]
        for name in in_path:
            yield {"name": name, "in": "path", "required": True, "schema": props[name]}
    if op.query is not None:
        schema = struct_schema(op.query)
        required = set(schema.get("required", ()))
        for name, prop in schema["properties"].items():
            if name not in ENVELOPE:
                yield {"name": name, "in": "query", "required": name in required, "schema": prop}
    if op.authenticated:
        client_id = {"type": "string", "pattern": CHANNEL_PATTERN}
        description = "Your client id (anonymous access); made up by the server if absent."
        yield {"name": CLIENT_ID_HEADER, "in": "header", "schema": client_id}
        yield {"name": "client_id", "in": "query", "description": description, "schema": client_id}
    for param in op.params:
        yield {
            "name": param.name,
            "in": param.where,
            "description": param.description,
            "schema": param.schema,
        }


def _response(returns: Returns) -> dict[str, Any]:
    out: dict[str, Any] = {"description": returns.description}
    if returns.types:
        refs = [ref(t.__name__) for t in returns.types]
        schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
        out["content"] = {returns.media_type: {"schema": schema}}
    elif returns.schema is not None:
        out["content"] = {returns.media_type: {"schema": returns.schema}}
    return out


@api.operation(
    "GET",
    "/openapi.json",
    summary="This document",
    tag="operations",
    authenticated=False,
    returns=(Returns("200", "An OpenAPI 3.1 document.", schema={"type": "object"}),),
)
async def openapi(call: Call) -> Response:
    state = call.request.app.state
    cached: bytes | None = getattr(state, "openapi", None)
    if cached is None:
        cached = state.openapi = msgspec.json.encode(openapi_document(state.operations))
    return Response(cached, media_type="application/json")


__all__ = ["api", "openapi_document"]
