"""Who is asking (PROTOCOL.md §6), the same way for the WebSocket, REST and SSE.

A caller presents a token (``kind="token"``), an API key ``NAME:SECRET`` (``kind="key"``,
client id ``?client_id=`` or ``key:NAME``), or nothing: then it is anonymous, if the server
allows that. Credentials that are presented and do not verify are always refused (40100).
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass

from starlette.requests import Request

from roomcast.core.authz import Capability, Principal
from roomcast.core.node import Node
from roomcast.protocol.errors import BadRequest, Unauthorized
from roomcast.protocol.messages import CHANNEL_PATTERN

CLIENT_ID_HEADER = "X-Roomcast-Client-Id"


@dataclass(frozen=True, slots=True)
class Identity:
    """A principal and, for a token, when it expires (seconds since the epoch)."""

    principal: Principal
    expires_at: float | None = None


def _check_client_id(client_id: str) -> None:
    if not re.fullmatch(CHANNEL_PATTERN, client_id):
        raise BadRequest("client_id must be 1-200 characters of A-Z a-z 0-9 _ . : -")


def _check_not_an_agent(node: Node, client_id: str) -> None:
    """Only API-key holders (agent workers) may speak as a configured agent (§6)."""
    if client_id in node.agent_names:
        raise Unauthorized(
            f"{client_id!r} is the name of an agent of this server: pick another client_id"
        )


def anonymous_principal(node: Node, client_id: str | None) -> Principal:
    """Who an anonymous caller is (§6): the client_id it picked, or a new one."""
    settings = node.settings
    if not settings.anonymous_enabled:
        raise Unauthorized("credentials required: this server does not allow anonymous access")
    if client_id is None or client_id == "":
        client_id = "anon-" + secrets.token_hex(4)
    _check_client_id(client_id)
    _check_not_an_agent(node, client_id)
    return Principal(client_id, Capability.parse(settings.anonymous_capability))


def token_identity(node: Node, token: str, client_id: str | None = None) -> Identity:
    """A token's holder; a ``client_id`` given alongside must be the token's."""
    claims = node.settings.key_ring.verify(token)
    if client_id and client_id != claims.client_id:
        raise Unauthorized(f"client_id {client_id!r} is not the token's client_id")
    _check_not_an_agent(node, claims.client_id)
    return Identity(Principal(claims.client_id, claims.capability, "token"), claims.exp)


def key_identity(node: Node, name_secret: str, client_id: str | None = None) -> Identity:
    """An API key's holder: ``client_id`` if given, else ``key:NAME``."""
    key = node.settings.key_ring.authenticate(name_secret)
    if client_id is None or client_id == "":
        client_id = f"key:{key.name}"
    _check_client_id(client_id)
    return Identity(Principal(client_id, key.capability, "key"))


def resolve(node: Node, *, token: str | None, key: str | None, client_id: str | None) -> Identity:
    """The caller, from whichever credential it presented (or none)."""
    if token is not None:
        return token_identity(node, token, client_id)
    if key is not None:
        return key_identity(node, key, client_id)
    return Identity(anonymous_principal(node, client_id))


def bearer(request: Request) -> str | None:
    """The credential of an ``Authorization: Bearer`` header (40100 for another scheme)."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("Authorization must be `Bearer <token or NAME:SECRET>`")
    return value.strip()


def request_identity(node: Node, request: Request) -> Identity:
    """The caller of an HTTP request: ``Authorization: Bearer <token or NAME:SECRET>`` (or
    ``?token=``), else anonymous, with ``X-Roomcast-Client-Id`` (or ``?client_id=``)
    picking the client id."""
    header = request.headers.get(CLIENT_ID_HEADER)
    query = request.query_params.get("client_id")
    for given in (header, query):
        if given is not None:  # given, then well formed (an empty one is not "absent")
            _check_client_id(given)
    client_id = header or query
    if "key" in request.query_params:
        raise Unauthorized("pass an API key as `Authorization: Bearer NAME:SECRET`, not in the URL")
    credential = bearer(request)
    if credential is None:
        return resolve(node, token=request.query_params.get("token"), key=None, client_id=client_id)
    if ":" in credential:  # a JWT never holds ':'
        return key_identity(node, credential, client_id)
    return token_identity(node, credential, client_id)


def request_principal(node: Node, request: Request) -> Principal:
    """The principal of :func:`request_identity`."""
    return request_identity(node, request).principal


_CREDENTIAL_IN_URL = re.compile(r"([?&](?:key|token)=)[^&\s\"]*")


class RedactCredentials(logging.Filter):
    """Masks ``?key=`` and ``?token=`` in log lines (uvicorn logs request paths with their
    query strings), so no secret reaches a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                _CREDENTIAL_IN_URL.sub(r"\1***", a) if isinstance(a, str) else a
                for a in record.args
            )
        if isinstance(record.msg, str) and ("key=" in record.msg or "token=" in record.msg):
            record.msg = _CREDENTIAL_IN_URL.sub(r"\1***", record.msg)
        return True


__all__ = [
    "CLIENT_ID_HEADER",
    "Identity",
    "RedactCredentials",
    "anonymous_principal",
    "bearer",
    "key_identity",
    "request_identity",
    "request_principal",
    "resolve",
    "token_identity",
]
