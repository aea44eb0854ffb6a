"""Where the endpoints are, from the one URL a user gives: the HTTP base or the WebSocket URL."""

from __future__ import annotations

from urllib.parse import SplitResult, urlencode, urlsplit, urlunsplit

WS_PATH = "/v1/ws"

_TO_WS = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_TO_HTTP = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


def _split(url: str) -> SplitResult:
    """``url``'s parts, or ``ValueError`` (one line) unless it names a server: a scheme of
    ``http``, ``https``, ``ws`` or ``wss``, a host, and a port that is a number if given."""
    parts = urlsplit(url)
    problem = None
    if parts.scheme.lower() not in _TO_WS:
        problem = "no http://, https://, ws:// or wss:// in front"
    elif not parts.hostname:
        problem = "no host"
    else:
        try:
            parts.port  # noqa: B018 - reading the port parses it
        except ValueError:
            problem = "the port is not a number from 0 to 65535"
    if problem is not None:
        raise ValueError(
            f"not a server URL: {url!r} ({problem}): use http://host:port or ws://host:port"
        )
    return parts


def websocket_url(url: str, params: dict[str, str | None] | None = None) -> str:
    """The ``/v1/ws`` URL for ``url`` with ``params`` (``None`` values left out) in the query.

    ``http://host:8000`` (the HTTP base, as the server prints it) becomes
    ``ws://host:8000/v1/ws``; a ``ws://`` or ``wss://`` URL is used as it is, with ``/v1/ws``
    added only when it has no path.
    """
    parts = _split(url)
    scheme = _TO_WS[parts.scheme.lower()]
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
    parts = _split(url)
    scheme = _TO_HTTP[parts.scheme.lower()]
    path = parts.path.rstrip("/")
    if path.endswith(WS_PATH):
        path = path[: -len(WS_PATH)]
    return urlunsplit((scheme, parts.netloc, path, "", ""))
