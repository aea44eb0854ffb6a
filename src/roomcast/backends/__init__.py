"""Backends, chosen by URL: ``memory://``, ``sqlite:///path``, ``redis://host:port/db``,
``redis+sentinel://host:port[,host:port...]/service/db`` and
``redis+cluster://host:port[,host:port...]`` (see ``base`` for the contract).

Drivers are imported lazily, so a backend's dependencies are needed only when it is used.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .base import Bus, Store, StoreOptions


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


def open_backend(url: str, options: StoreOptions | None = None) -> Store:
    """The Store (with its Bus as ``store.bus``) for ``url``; call ``await store.open()``."""
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:
        raise BackendURLError(f"{shown_url(url)!r}: {exc}") from None
    options = options or StoreOptions()
    if scheme == "memory":
        from .local import LocalBus
        from .memory import MemoryStore

        return MemoryStore(LocalBus(), options)
    if scheme == "sqlite":
        from .local import LocalBus
        from .sqlite import SqliteStore

        return SqliteStore(sqlite_path(url), LocalBus(), options)
    if scheme in (
        "redis",
        "rediss",
        "redis+sentinel",
        "rediss+sentinel",
        "redis+cluster",
        "rediss+cluster",
    ):
        from .redis_store import RedisStore

        try:
            return RedisStore(url, options)
        except ValueError as exc:
            raise BackendURLError(str(exc)) from None
    raise BackendURLError(
        f"unknown store URL {url!r}: use memory://, sqlite:///path, redis://host:port/db, "
        "redis+sentinel://host:port[,host:port...]/service/db or "
        "redis+cluster://host:port[,host:port...]"
    )


__all__ = [
    "BackendURLError",
    "Bus",
    "Store",
    "StoreOptions",
    "open_backend",
    "shown_url",
    "sqlite_path",
]
