"""The HTTP API (docs/protocol.md §7) where the WebSocket has no equivalent: listing channels."""

from __future__ import annotations

import httpx
import msgspec

from roomcast.protocol.errors import RoomcastError
from roomcast.protocol.http import ChannelPage, ChannelSummary

from .errors import error_from_http
from .urls import http_base

HTTP_TIMEOUT_S = 10.0


async def list_channels(
    url: str,
    *,
    prefix: str = "",
    limit: int = 100,
    token: str | None = None,
    key: str | None = None,
    after: str = "",
) -> list[ChannelSummary]:
    """``GET /v1/channels``: the channels with at least one event, by name.

    Args:
        url: The server's HTTP base or WebSocket URL (as for :func:`connect`).
        prefix: Only channels whose name starts with it.
        limit: At most this many (1 to 1000).
        after: Only channels named after this (the last name of the previous page).
        token: A signed token, sent as ``Authorization: Bearer``.
        key: An API key ``name:secret``, sent the same way (when there is no token).

    Returns:
        ``ChannelSummary`` items: ``channel``, ``serial`` (the latest), ``updated_at``
        (ms), ``occupancy`` (subscribers on the node that answered), ``epoch``.

    Raises:
        RoomcastError: The server answered with an error (typed by its code; 40100 is
            :class:`AuthError`).
        httpx.HTTPError: The server could not be reached.
    """
    credential = token or key
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    async with httpx.AsyncClient(base_url=http_base(url), timeout=HTTP_TIMEOUT_S) as http:
        response = await http.get(
            "/v1/channels",
            params={"prefix": prefix, "limit": limit, "after": after},
            headers=headers,
        )
    if response.status_code != 200:
        raise http_error(response)
    return msgspec.json.decode(response.content, type=ChannelPage).items


def http_error(response: httpx.Response) -> RoomcastError:
    """The typed error for an HTTP error response (``{"error": {code, message, ...}}``)."""
    request = response.request
    return error_from_http(
        response.status_code, response.content, f"{request.method} {request.url.path}"
    )
