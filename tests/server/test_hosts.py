"""The Host header (docs/deploy.md, docs/configuration.md ``allowed_hosts``): a server bound
to loopback answers only loopback host names, so a page whose name was rebound to 127.0.0.1
(DNS rebinding) can neither read nor write through it. Raw requests, to set any Host."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import Iterator

import pytest

from roomcast.testing import ServerProcess, WireClient


@pytest.fixture(scope="module")
def loopback(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    with ServerProcess(store="memory://", env=test_env) as proc:
        yield proc


async def raw(port: int, request: str) -> tuple[int, bytes]:
    """Send ``request`` as it is; the status code and the body (up to 64 KB) of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request.encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        body = await reader.readexactly(length) if length else b""
        return status, body
    finally:
        writer.close()


def upgrade(host: str, origin: str | None = None) -> str:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /v1/ws?client_id=mallory HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return "\r\n".join(lines) + "\r\n\r\n"


def publish(host: str, channel: str, origin: str | None = None) -> str:
    body = json.dumps({"data": "rebound"})
    lines = [
        f"POST /v1/channels/{channel}/messages HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "X-Roomcast-Client-Id: mallory",
        "Connection: close",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return "\r\n".join(lines) + "\r\n\r\n" + body


async def test_a_rebound_host_name_is_refused_before_any_work(loopback: ServerProcess) -> None:
    port = loopback.port
    evil = f"evil.example:{port}"
    status, _ = await raw(port, upgrade(evil, f"http://{evil}"))
    assert status == 400  # refused before the upgrade
    channel = f"room:{uuid.uuid4().hex[:8]}"
    status, body = await raw(port, publish(evil, channel, f"http://{evil}"))
    assert status == 400
    assert json.loads(body)["error"]["code"] == 40000
    status, _ = await raw(port, f"GET /v1/channels HTTP/1.1\r\nHost: {evil}\r\n\r\n")
    assert status == 400  # reads too: the page must not read the server either
    reader = await WireClient.connect(loopback.ws_url, client_id="reader")
    attached = await reader.request("attach", channel=channel)
    assert attached["serial"] == 0  # nothing was written
    await reader.close()


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "[::1]", "LOCALHOST", "localhost."])
async def test_loopback_names_are_served_with_any_port(loopback: ServerProcess, name: str) -> None:
    port = loopback.port
    for host in (name, f"{name}:{port}", f"{name}:1"):
        status, _ = await raw(port, upgrade(host, f"http://{host}"))
        assert status == 101, host
        status, _ = await raw(port, publish(host, f"room:{uuid.uuid4().hex[:8]}", f"http://{host}"))
        assert status == 200, host


async def test_allowed_hosts_names_the_hosts_served(test_env: dict[str, str]) -> None:
    env = {**test_env, "ROOMCAST_ALLOWED_HOSTS": "chat.example.com, *.rooms.example"}
    with ServerProcess(store="memory://", env=env) as proc:
        port = proc.port
        for host in ("chat.example.com", f"a.rooms.example:{port}", "127.0.0.1"):
            status, _ = await raw(port, upgrade(host))
            assert status == 101, host
        for host in ("evil.example", "rooms.example", "chat.example.com.evil.example"):
            status, _ = await raw(port, upgrade(host))
            assert status == 400, host
    with ServerProcess(store="memory://", env={**test_env, "ROOMCAST_ALLOWED_HOSTS": "*"}) as proc:
        status, _ = await raw(proc.port, upgrade("anything.example"))
        assert status == 101
