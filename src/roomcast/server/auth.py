"""Who is asking (PROTOCOL.md §6), the same way for the WebSocket, REST and SSE."""

from __future__ import annotations

import re
import secrets

from starlette.requests import Request

from roomcast.core.authz import Capability, Principal
from roomcast.core.node import Node
from roomcast.protocol.errors import BadRequest, Unauthorized
from roomcast.protocol.messages import CHANNEL_PATTERN

CLIENT_ID_HEADER = "X-Roomcast-Client-Id"


def anonymous_principal(
    node: Node, client_id: str | None, *, credentials: bool = False
) -> Principal:
    """Who an anonymous caller is (§6): the client_id it picked, or a new one."""
    settings = node.settings
    if credentials:
        raise Unauthorized("this server has no API keys, so it accepts no token or key")
    if not settings.anonymous_enabled:
        raise Unauthorized("credentials required: this server does not allow anonymous access")
    if client_id is None or client_id == "":
        client_id = "anon-" + secrets.token_hex(4)
    if not re.fullmatch(CHANNEL_PATTERN, client_id):
        raise BadRequest("client_id must be 1-200 characters of A-Z a-z 0-9 _ . : -")
    return Principal(client_id, Capability.parse(settings.anonymous_capability))


def request_principal(node: Node, request: Request) -> Principal:
    """The caller of an HTTP request: ``X-Roomcast-Client-Id`` (or ``?client_id=``) picks
    the client id of an anonymous caller. ``Authorization`` (or ``?token=`` / ``?key=``)
    is refused until the server has API keys."""
    client_id = request.headers.get(CLIENT_ID_HEADER) or request.query_params.get("client_id")
    credentials = (
        "authorization" in request.headers
        or "token" in request.query_params
        or "key" in request.query_params
    )
    return anonymous_principal(node, client_id, credentials=credentials)


__all__ = ["CLIENT_ID_HEADER", "anonymous_principal", "request_principal"]
