"""Where the endpoints are, from the one URL a user gives: the HTTP base or the WebSocket URL."""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit, urlunsplit

WS_PATH = "/v1/ws"

_TO_WS = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_TO_HTTP = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


def websocket_url(url: str, params: dict[str, str | None] | None = None) -> str:
    """The ``/v1/ws`` URL for ``url`` with ``params`` (``None`` values left out) in the query.

    ``http://host:8000`` (the HTTP base, as the server prints it) becomes
    ``ws://host:8000/v1/ws``; a ``ws://`` or ``wss://`` URL is used as it is, with ``/v1/ws``
    added only when it has no path.
    """
    parts = urlsplit(url)
    scheme = _TO_WS.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"not a server URL: {url!r} (use http://host:port or ws://host:port)")
    path = parts.path.rstrip("/")
    if parts.scheme.lower() in ("http", "https") or not path:
        if not path.endswith(WS_PATH):
            path += WS_PATH
    query = [q for q in parts.query.split("&") if q]
    if params:
        extra = urlencode({k: v for k, v in params.items() if v is not None})
        if extra:
            query.append(extra)
    return urlunsplit((scheme, parts.netloc, path, "&".join(query), ""))


def http_base(url: str) -> str:
    """The HTTP base of ``url``: ``ws://host:8000/v1/ws`` becomes ``http://host:8000``."""
    parts = urlsplit(url)
    scheme = _TO_HTTP.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"not a server URL: {url!r} (use http://host:port or ws://host:port)")
    path = parts.path.rstrip("/")
    if path.endswith(WS_PATH):
        path = path[: -len(WS_PATH)]
    return urlunsplit((scheme, parts.netloc, path, "", ""))
