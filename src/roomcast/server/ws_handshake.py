"""The server's side of the WebSocket opening handshake (RFC 6455 §4.2) for a request that
uvicorn's HTTP parser has already read.

uvicorn hands an upgrade request to its WebSocket protocol as bytes: it writes the request
line and headers out again, and websockets reads them a second time (a generator per line,
a ``Headers`` object), checks them, and builds its 101 response as another ``Headers``
object, with a ``Date`` that uvicorn then replaces. That was a sixth of the event loop's work
per client when thousands reconnect at once. :func:`plain_upgrade_key` checks the request as
httptools parsed it (names in lower case, values without surrounding blanks) and
:func:`switching_protocols` writes the 101 as bytes.

Only a plain upgrade is answered here: every check websockets makes passes, and no
extension or subprotocol is offered to negotiate. Anything else (a bad or missing key,
another version, a header too long, a body) gets None, and websockets reads the request
and gives its own answer, errors included, as before.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence

from websockets.exceptions import InvalidHeaderValue
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")  # what websockets' Headers takes
_SINGLE = (b"sec-websocket-key", b"sec-websocket-version", b"origin")
_NOT_PLAIN = (b"sec-websocket-extensions", b"sec-websocket-protocol", b"transfer-encoding")


def accept_key(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for the client's ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def plain_upgrade_key(
    method: str, url: bytes, headers: Sequence[tuple[bytes, bytes]]
) -> bytes | None:
    """The ``Sec-WebSocket-Key`` of a plain, valid upgrade request; None for any other.

    Plain means what websockets would accept without negotiating anything: ``GET``, an ASCII
    target, ``Connection`` naming ``upgrade``, ``Upgrade: websocket`` alone, one key of 16
    bytes in base64, version 13, at most one ``Origin``, no body, no extension or
    subprotocol offered, and within websockets' limits on header count and line length.

    Args:
        method: The request's method.
        url: Its target (path and query), as the client sent it.
        headers: Its headers as uvicorn keeps them (names in lower case).
    """
    if method != "GET" or not url.isascii() or len(headers) > MAX_NUM_HEADERS:
        return None
    if len(method) + len(url) + 12 > MAX_LINE_LENGTH:  # "GET <url> HTTP/1.1\r\n"
        return None
    found: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        if len(name) + len(value) + 4 > MAX_LINE_LENGTH or name in _NOT_PLAIN:
            return None
        found.setdefault(name, []).append(value)
    if any(len(found.get(name, ())) > 1 for name in _SINGLE):
        return None
    if any(length != b"0" for length in found.get(b"content-length", ())):
        return None
    if not _has_token(found.get(b"connection", ()), b"upgrade"):
        return None
    if [value.lower() for value in found.get(b"upgrade", ())] != [b"websocket"]:
        return None
    if found.get(b"sec-websocket-version") != [b"13"]:
        return None
    [key] = found.get(b"sec-websocket-key") or [b""]
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except binascii.Error:
        return None
    return key


def _has_token(values: Iterable[bytes], wanted: bytes) -> bool:
    """Whether comma-separated ``values`` name ``wanted`` (any case), all of them tokens."""
    tokens = [token.strip(b" \t") for value in values for token in value.split(b",")]
    if not all(_TOKEN.fullmatch(token) for token in tokens):
        return False
    return any(token.lower() == wanted for token in tokens)


def switching_protocols(accept: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The 101 response: ``accept`` (:func:`accept_key`), then ``headers`` in order.

    Raises:
        InvalidHeaderValue: A value holds a character a header may not (a line break
            would end the header, or the response), as websockets raises it.
    """
    lines = [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: %s\r\n" % accept
    ]
    for name, value in headers:
        if not _VALUE.fullmatch(value):
            raise InvalidHeaderValue(name.decode("latin-1"), value.decode("latin-1"))
        lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"\r\n")
    return b"".join(lines)


__all__ = ["GUID", "accept_key", "plain_upgrade_key", "switching_protocols"]
