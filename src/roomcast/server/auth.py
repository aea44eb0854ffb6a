"""Where an HTTP request carries its credentials; the rules of who that is are in
:mod:`roomcast.core.identity`, the same for the WebSocket, REST and SSE.
"""

from __future__ import annotations

import logging
import re
import urllib.parse

from starlette.requests import Request

from roomcast.core.authz import Principal
from roomcast.core.identity import Identity, check_client_id
from roomcast.core.node import Node
from roomcast.protocol.errors import Unauthorized

CLIENT_ID_HEADER = "X-Roomcast-Client-Id"


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
            check_client_id(given)
    client_id = header or query
    if "key" in request.query_params:
        raise Unauthorized("pass an API key as `Authorization: Bearer NAME:SECRET`, not in the URL")
    credential = bearer(request)
    identities = node.identities
    if credential is None:
        token = request.query_params.get("token")
        return identities.resolve(token=token, key=None, client_id=client_id)
    if ":" in credential:  # a JWT never holds ':'
        return identities.key(credential, client_id)
    return identities.token(credential, client_id)


def request_principal(node: Node, request: Request) -> Principal:
    """The principal of :func:`request_identity`."""
    return request_identity(node, request).principal


_QUERY = re.compile(r"\?([^\s\"#]*)")
_PARAMETER = re.compile(r"[^&;]*")
_SECRET_NAMES = frozenset({"key", "token"})
MASK = "***"


def _decoded_name(name: str) -> str:
    """A query parameter's name as a server could read it: percent-decoded (again while that
    changes it, bounded), ``+`` as a space, any case."""
    for _ in range(4):
        decoded = urllib.parse.unquote_plus(name)
        if decoded == name:
            break
        name = decoded
    return name.strip().lower()


def _mask_parameter(match: re.Match[str]) -> str:
    name, eq, _ = match.group(0).partition("=")
    return f"{name}={MASK}" if eq and _decoded_name(name) in _SECRET_NAMES else match.group(0)


def _mask_query(match: re.Match[str]) -> str:
    return "?" + _PARAMETER.sub(_mask_parameter, match.group(1))


def redact(text: str) -> str:
    """``text`` with the value of every query parameter named ``key`` or ``token`` masked,
    however the name is spelled (``%6Bey``, ``TOKEN``, ...)."""
    return _QUERY.sub(_mask_query, text) if "?" in text else text


class RedactCredentials(logging.Filter):
    """Masks ``?key=`` and ``?token=`` in log lines (uvicorn logs request paths with their
    query strings, as sent), so no secret reaches a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


__all__ = [
    "CLIENT_ID_HEADER",
    "Identity",
    "RedactCredentials",
    "bearer",
    "request_identity",
    "request_principal",
]
