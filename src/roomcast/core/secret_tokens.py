"""Unguessable tokens (resume keys, connection ids) from the OS's random source, read in bulk.

``secrets.token_urlsafe`` reads the OS's random source once per token, and that read lets go
of the interpreter lock: when a thousand clients reconnect at once, each such read in the
event loop waits to win the lock back from the store's threads. The same bytes of
``os.urandom`` are read here a few kilobytes at a time and handed out in order, so a token is
as unguessable as one from ``secrets``. A forked child drops what its parent read, so two
processes never hand out the same bytes.
"""

from __future__ import annotations

import base64
import os
import threading

__all__ = ["token_urlsafe"]

_CHUNK = 4096
_pool = bytearray()
_lock = threading.Lock()  # two threads must never take the same bytes


def _forget_in_child() -> None:
    global _lock
    _pool.clear()
    _lock = threading.Lock()  # held across the fork by the parent; the child's copy is its own


# Held across a fork, so that a child never starts with the pool half taken.
os.register_at_fork(
    before=lambda: _lock.acquire(),
    after_in_parent=lambda: _lock.release(),
    after_in_child=_forget_in_child,
)


def token_urlsafe(nbytes: int) -> str:
    """``nbytes`` random bytes as URL-safe base64 without padding, like
    ``secrets.token_urlsafe(nbytes)``."""
    with _lock:
        if nbytes > len(_pool):
            _pool.extend(os.urandom(max(_CHUNK, nbytes)))
        taken = bytes(_pool[:nbytes])
        del _pool[:nbytes]
    return base64.urlsafe_b64encode(taken).rstrip(b"=").decode("ascii")
