"""Backends, chosen by URL: ``memory://``, ``sqlite:///path`` and ``redis://host:port/db``
(see ``base`` for the contract).

Drivers are imported lazily, so a backend's dependencies are needed only when it is used.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from .base import Bus, Store, StoreOptions


class BackendURLError(ValueError):
    """A store URL that names no backend, or names one badly."""


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
    scheme = urlsplit(url).scheme
    options = options or StoreOptions()
    if scheme == "memory":
        from .local import LocalBus
        from .memory import MemoryStore

        return MemoryStore(LocalBus(), options)
    if scheme == "sqlite":
        from .local import LocalBus
        from .sqlite import SqliteStore

        return SqliteStore(sqlite_path(url), LocalBus(), options)
    if scheme in ("redis", "rediss"):
        from .redis_store import RedisStore

        try:
            return RedisStore(url, options)
        except ValueError as exc:
            raise BackendURLError(str(exc)) from None
    raise BackendURLError(
        f"unknown store URL {url!r}: use memory://, sqlite:///path or redis://host:port/db"
    )


__all__ = ["BackendURLError", "Bus", "Store", "StoreOptions", "open_backend", "sqlite_path"]
