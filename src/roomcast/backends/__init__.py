"""Backends, chosen by URL: ``memory://``, ``sqlite:///path``, ``redis://host:port/db``,
``redis+sentinel://host:port[,host:port...]/service/db`` and
``redis+cluster://host:port[,host:port...]`` (see ``base`` for the contract).

Drivers are imported lazily, so a backend's dependencies are needed only when it is used.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .base import Bus, Store, StoreOptions
from .urls import BackendURLError, shown_url, sqlite_path


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
