"""The WebSocket opening handshake of ``roomcast serve`` (server/ws_handshake.py): which
upgrade requests are taken as uvicorn parsed them, the 101 written for them, and, through
uvicorn, the same scope and the same answers as when websockets reads the request again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import InvalidHeaderValue
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Request

from asgi_echo import uvicorn_serving
from roomcast.server.uvicorn_http import RoomcastHttpProtocol
from roomcast.server.uvicorn_websocket import RoomcastWebSocketProtocol
from roomcast.server.ws_handshake import accept_key, plain_upgrade_key, switching_protocols

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example
PLAIN = [
    (b"host", b"example.com"),
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-key", KEY),
    (b"sec-websocket-version", b"13"),
    (b"origin", b"http://example.com"),
]


def test_the_accept_key_is_rfc_6455_s() -> None:
    assert accept_key(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_a_plain_upgrade_gives_its_key() -> None:
    assert plain_upgrade_key("GET", b"/v1/ws?client_id=ann", PLAIN) == KEY


def replaced(name: bytes, *values: bytes) -> list[tuple[bytes, bytes]]:
    """PLAIN with ``name``'s values instead of its own (none: without it)."""
    return [(n, v) for n, v in PLAIN if n != name] + [(name, v) for v in values]


@pytest.mark.parametrize(
    "headers",
    [
        replaced(b"connection", b"keep-alive, Upgrade"),
        replaced(b"connection", b"keep-alive", b"upgrade"),
        replaced(b"upgrade", b"WebSocket"),
        replaced(b"content-length", b"0"),
        replaced(b"origin"),
    ],
)
def test_plain_upgrades_in_other_words(headers: list[tuple[bytes, bytes]]) -> None:
    assert plain_upgrade_key("GET", b"/", headers) == KEY


@pytest.mark.parametrize(
    ("method", "url", "headers"),
    [
        ("POST", b"/", PLAIN),
        ("GET", "/é".encode(), PLAIN),
        ("GET", b"/" + b"x" * MAX_LINE_LENGTH, PLAIN),
        ("GET", b"/", replaced(b"connection")),
        ("GET", b"/", replaced(b"connection", b"keep-alive")),
        ("GET", b"/", replaced(b"connection", b"upgrade;x")),
        ("GET", b"/", replaced(b"upgrade")),
        ("GET", b"/", replaced(b"upgrade", b"websocket, h2c")),
        ("GET", b"/", replaced(b"upgrade", b"websocket", b"h2c")),
        ("GET", b"/", replaced(b"sec-websocket-key")),
        ("GET", b"/", replaced(b"sec-websocket-key", b"not base64!")),
        ("GET", b"/", replaced(b"sec-websocket-key", b"c2hvcnQ=")),  # 5 bytes
        ("GET", b"/", replaced(b"sec-websocket-key", KEY, KEY)),
        ("GET", b"/", replaced(b"sec-websocket-version")),
        ("GET", b"/", replaced(b"sec-websocket-version", b"8")),
        ("GET", b"/", replaced(b"sec-websocket-version", b"13", b"13")),
        ("GET", b"/", replaced(b"origin", b"http://a", b"http://b")),
        ("GET", b"/", replaced(b"sec-websocket-extensions", b"permessage-deflate")),
        ("GET", b"/", replaced(b"sec-websocket-protocol", b"chat")),
        ("GET", b"/", replaced(b"transfer-encoding", b"chunked")),
        ("GET", b"/", replaced(b"content-length", b"5")),
        ("GET", b"/", PLAIN + [(b"x-many", b"1")] * MAX_NUM_HEADERS),
        ("GET", b"/", replaced(b"x-long", b"x" * MAX_LINE_LENGTH)),
    ],
)
def test_anything_else_is_left_to_websockets(
    method: str, url: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    assert plain_upgrade_key(method, url, headers) is None


def test_the_request_line_may_be_as_long_as_websockets_reads() -> None:
    longest = b"/" + b"x" * (MAX_LINE_LENGTH - len(b"GET / HTTP/1.1\r\n"))
    assert plain_upgrade_key("GET", longest, PLAIN) == KEY
    assert plain_upgrade_key("GET", longest + b"x", PLAIN) is None


def test_a_header_value_that_would_break_the_101_is_refused() -> None:
    with pytest.raises(InvalidHeaderValue):
        switching_protocols(b"abc=", [(b"x-room", b"lobby\r\nx-evil: 1")])


def test_the_101_names_the_accept_key_then_the_given_headers() -> None:
    assert switching_protocols(b"abc=", [(b"server", b"x"), (b"x-room", b"1")]) == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: abc=\r\nserver: x\r\nx-room: 1\r\n\r\n"
    )


# Through uvicorn: RoomcastHttpProtocol hands the parsed request over; uvicorn's own HTTP
# protocol hands it over as bytes, which websockets reads (the way of any request that is
# not plain). Both must give the app the same scope and the client the same answer.

Scopes = list[dict[str, Any]]


def recording(scopes: Scopes, *, accept: bool = True, room: bytes = b"lobby") -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scopes.append(scope)
        await receive()  # websocket.connect
        if not accept:
            await send({"type": "websocket.close"})
            return
        await send({"type": "websocket.accept", "headers": [(b"X-Room", room)]})
        while (await receive())["type"] == "websocket.receive":
            pass

    return app


async def answer(
    http: Any,
    app: Any,
    request: bytes,
    *,
    deflate: bool = False,
    log_level: str = "warning",
    logged: list[str] | None = None,
) -> bytes:
    """What the server answers ``request`` with, up to the end of its headers (as
    ``roomcast serve``, without compression unless ``deflate``); what it logged meanwhile
    goes in ``logged``."""
    logged = [] if logged is None else logged
    config = {"http": http, "ws": RoomcastWebSocketProtocol, "lifespan": "off"}
    config |= {"ws_per_message_deflate": deflate, "log_level": log_level}
    async with uvicorn_serving(app, **config) as (port, _):
        with uvicorn_log() as lines:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                await asyncio.sleep(0.1)  # what the server logs after it answered
            finally:
                writer.close()
    logged.extend(lines)
    return re.sub(rb"(?i)date: [^\r]*\r\n", b"date: -\r\n", head)


def request_of(url: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [b"GET %s HTTP/1.1\r\n" % url, *(b"%s: %s\r\n" % header for header in headers)]
    return b"".join(lines) + b"\r\n"


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the requests websockets has read (its parser starts on one before any byte)."""
    calls: list[int] = []
    parse = Request.parse.__func__  # type: ignore[attr-defined]

    def counted(cls: type[Request], *args: Any, **kwargs: Any) -> Any:
        request = yield from parse(cls, *args, **kwargs)
        calls.append(1)
        return request

    monkeypatch.setattr(Request, "parse", classmethod(counted))
    return calls


async def test_a_plain_upgrade_is_taken_as_parsed_with_the_scope_and_101_of_websockets(
    parses: list[int],
) -> None:
    request = request_of(b"/v1/a%20room/ws?client_id=ann&x=%2F", PLAIN)
    parsed: Scopes = []
    read: Scopes = []
    from_parsed = await answer(RoomcastHttpProtocol, recording(parsed), request)
    assert parses == []  # nothing read twice
    from_read = await answer("httptools", recording(read), request)
    assert parses == [1]
    assert from_parsed == from_read
    assert from_parsed.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in from_parsed
    assert b"x-room: lobby\r\n" in from_parsed
    [one], [other] = parsed, read
    for scope in (one, other):
        del scope["client"], scope["server"], scope["state"]
        del scope["extensions"]["roomcast.direct_send"]
    assert one == other
    assert one["path"] == "/v1/a room/ws" and one["query_string"] == b"client_id=ann&x=%2F"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (replaced(b"sec-websocket-version", b"8"), b"400"),
        (replaced(b"sec-websocket-key", b"c2hvcnQ="), b"400"),
        (replaced(b"sec-websocket-key"), b"400"),
    ],
)
async def test_an_upgrade_that_is_not_plain_gets_websockets_answer(
    headers: list[tuple[bytes, bytes]], status: bytes, parses: list[int]
) -> None:
    request = request_of(b"/", headers)
    from_roomcast = await answer(RoomcastHttpProtocol, recording([]), request)
    assert from_roomcast.startswith(b"HTTP/1.1 " + status)
    assert from_roomcast == await answer("httptools", recording([]), request)
    assert parses == [1, 1]


async def test_a_subprotocol_offered_is_read_by_websockets_and_the_connection_opens(
    parses: list[int],
) -> None:
    scopes: Scopes = []
    request = request_of(b"/", replaced(b"sec-websocket-protocol", b"chat, superchat"))
    head = await answer(RoomcastHttpProtocol, recording(scopes), request)
    assert head.startswith(b"HTTP/1.1 101 ") and parses == [1]
    assert scopes[0]["subprotocols"] == ["chat", "superchat"]


@contextlib.contextmanager
def uvicorn_log() -> Iterator[list[str]]:
    """What uvicorn's error log (websockets' too) says meanwhile; from a server that has
    started (its logging configuration replaces the logger's handlers)."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


async def test_an_app_that_refuses_a_plain_upgrade_answers_403(parses: list[int]) -> None:
    request, refuse = request_of(b"/", PLAIN), recording([], accept=False)
    parsed_log: list[str] = []
    read_log: list[str] = []
    refused = await answer(
        RoomcastHttpProtocol, refuse, request, log_level="info", logged=parsed_log
    )
    assert refused.startswith(b"HTTP/1.1 403 ") and parses == []
    assert refused == await answer("httptools", refuse, request, log_level="info", logged=read_log)
    rejected = "connection rejected (403 Forbidden)"
    assert rejected in parsed_log and rejected in read_log


async def test_a_bad_header_from_the_app_is_a_500_as_before(parses: list[int]) -> None:
    request = request_of(b"/", PLAIN)
    app = recording([], room=b"lobby\r\nx-evil: 1")
    failed = await answer(RoomcastHttpProtocol, app, request)
    assert failed.startswith(b"HTTP/1.1 500 ") and b"x-evil" not in failed
    assert failed == await answer("httptools", app, request)


async def test_with_the_debug_log_on_websockets_reads_every_upgrade(parses: list[int]) -> None:
    lines: list[str] = []
    request = request_of(b"/", PLAIN)
    head = await answer(
        RoomcastHttpProtocol, recording([]), request, log_level="debug", logged=lines
    )
    assert head.startswith(b"HTTP/1.1 101 ") and parses == [1]
    assert "< GET / HTTP/1.1" in lines


async def test_with_compression_on_websockets_reads_every_upgrade(parses: list[int]) -> None:
    offer = replaced(b"sec-websocket-extensions", b"permessage-deflate")
    for headers in (PLAIN, offer):
        head = await answer(
            RoomcastHttpProtocol, recording([]), request_of(b"/", headers), deflate=True
        )
        assert head.startswith(b"HTTP/1.1 101 ")
    assert b"permessage-deflate" in head and parses == [1, 1]


async def test_a_second_accept_is_refused_as_uvicorn_refuses_it(parses: list[int]) -> None:
    async def twice(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.sleep(0.1)  # the 101 has gone out
        try:
            await send({"type": "websocket.accept"})
        except RuntimeError as exc:
            await send({"type": "websocket.send", "text": type(exc).__name__})
        while (await receive())["type"] == "websocket.receive":
            pass

    request = request_of(b"/", PLAIN)
    for http in (RoomcastHttpProtocol, "httptools"):
        config = {"http": http, "ws": RoomcastWebSocketProtocol, "ws_per_message_deflate": False}
        async with uvicorn_serving(twice, **config) as (port, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            frame = await asyncio.wait_for(reader.readexactly(14), 10)
            writer.close()
        assert head.count(b"HTTP/1.1 101") == 1 and frame == b"\x81\x0cRuntimeError"
    assert parses == [1]  # the second server's, which reads every request
