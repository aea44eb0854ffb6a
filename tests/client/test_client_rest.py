"""Listing channels over HTTP (``GET /v1/channels``), with errors typed like WebSocket ones."""

from __future__ import annotations

import httpx
import pytest

from roomcast.client import (
    AuthError,
    BadRequest,
    NotFound,
    Unavailable,
    connect,
    list_channels,
)
from roomcast.client.rest import http_error
from roomcast.testing import ServerProcess


async def test_list_channels_by_prefix(server: ServerProcess, channel_name: str) -> None:
    async with connect(server.url, client_id="alice") as client:
        await client.channels.get(channel_name).publish("a")
        await client.channels.get(channel_name + "-b").publish("b")
        await client.channels.get(channel_name + "-b").publish("c")
        await client.channels.get(channel_name).attach()
        items = await client.list_channels(prefix=channel_name)
        assert [(i.channel, i.serial) for i in items] == [
            (channel_name, 1),
            (channel_name + "-b", 2),
        ]
        assert items[0].occupancy == 1 and items[1].occupancy == 0
        assert items[0].updated_at > 0 and items[0].epoch == client.channels.get(channel_name).epoch
    # Without a connection, from the WebSocket URL as well.
    [only] = await list_channels(server.ws_url, prefix=channel_name + "-", limit=1)
    assert only.channel == channel_name + "-b"


async def test_http_errors_are_typed(server: ServerProcess) -> None:
    with pytest.raises(BadRequest, match="limit"):
        await list_channels(server.url, limit=5000)
    with pytest.raises(NotFound) as missing:
        await list_channels(server.url + "/not-here")
    assert missing.value.code == 40400


def test_an_error_without_our_body_is_typed_by_its_http_status() -> None:
    request = httpx.Request("GET", "http://proxy.example/v1/channels")
    error = http_error(httpx.Response(503, text="<html>bad gateway</html>", request=request))
    assert isinstance(error, Unavailable) and error.code == 50300
    assert "GET /v1/channels answered HTTP 503" in error.message
    body = b'{"error": {"code": 40100, "message": "bad token", "correlation_id": "c1"}}'
    refused = http_error(httpx.Response(401, content=body, request=request))
    assert isinstance(refused, AuthError) and "bad token" in refused.message
