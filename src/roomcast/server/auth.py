"""Where an HTTP request carries its credentials; the rules of who that is are in
:mod:`roomcast.core.identity`, the same for the WebSocket, REST and SSE.
"""

from __future__ import annotations

import logging
import re

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
    "bearer",
    "request_identity",
    "request_principal",
]
