"""Store URLs: how one is shown (passwords masked), the file of a ``sqlite://`` one, and the
error for one that names no backend. Every backend module may import this; it imports none.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


class BackendURLError(ValueError):
    """A store URL that names no backend, or names one badly."""


def shown_url(url: str) -> str:
    """A store URL as logs and messages show it: its passwords (the one before ``@`` and any
    ``...password=`` parameter) are masked."""
    try:
        parts = urlsplit(url)
    except ValueError:  # malformed (an unclosed "["): keep the scheme and the hosts only
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2].partition('?')[0]}"
    user, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in user:
        parts = parts._replace(netloc=f"{user.partition(':')[0]}:***@{hosts}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any("password" in name.lower() for name, _ in query):
        masked = [(n, "***" if "password" in n.lower() else v) for n, v in query]
        parts = parts._replace(query=urlencode(masked, safe="*"))
    return url if parts == urlsplit(url) else urlunsplit(parts)


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///path`` URL (``sqlite:////abs`` or ``sqlite:///rel``)."""
    parts = urlsplit(url)
    if parts.netloc:
        raise BackendURLError(f"{url!r}: write sqlite:///relative/path or sqlite:////absolute/path")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path:
        raise BackendURLError(f"{url!r} names no file: use sqlite:///path/to/roomcast.db")
    return Path(path).expanduser()


__all__ = ["BackendURLError", "shown_url", "sqlite_path"]
