"""The client's token: fresh for each connect, renewed before it expires.

With an ``auth_callback``, a token that expires is renewed on the open connection (the
``auth`` action) before it does, and a reconnect uses the newest token, so a connection
outlives any one token. :class:`TokenKeeper` holds the token and knows when to ask the
callback; the client sends the ``auth``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

# Renewal starts at 2/3 of a token's remaining lifetime or 30 s before it expires, whichever
# is sooner, but never before half of it (a short token would otherwise renew at once).
RENEW_BEFORE_S = 30.0
# A token closer than this to its expiry is replaced before a (re)connect uses it.
FRESH_FOR_S = 5.0

AuthCallback = Callable[[], str | Awaitable[str]]


def _claims(token: str) -> dict[str, Any]:
    """A token's claims, read without verifying them (only the server can); empty if it is
    not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


def token_expiry(token: str) -> float | None:
    """A token's ``exp`` (seconds since the epoch), read without verifying it (only the
    server can); None if it has none or is not a JWT."""
    exp = _claims(token).get("exp")
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def token_capability(token: str) -> dict[str, list[str]] | None:
    """A token's ``capability`` claim (what the server applies once it takes the token),
    read without verifying it; None if it has none."""
    capability = _claims(token).get("capability")
    return capability if isinstance(capability, dict) else None


def renew_delay(remaining: float) -> float:
    """Seconds from now until a token with ``remaining`` seconds of life should be renewed."""
    if remaining <= 0:
        return 0.0
    return min(remaining * 2 / 3, max(remaining - RENEW_BEFORE_S, remaining / 2))


class TokenKeeper:
    """The token in use and the ``auth_callback`` that replaces it.

    Attributes:
        token: The token in use (None for none, or an API key's connection).
        callback: The ``auth_callback``, or None.
    """

    def __init__(self, token: str | None, callback: AuthCallback | None) -> None:
        self.token = token
        self.callback = callback
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()

    def set(self, token: str) -> None:
        """Use ``token`` from now on (wakes :meth:`renew_forever` if it is new)."""
        if token != self.token:
            self.token = token
            self._changed.set()

    async def from_callback(self) -> str:
        """A new token from the callback (one call at a time); the caller sets it.

        Raises:
            TypeError: The callback returned something other than a token string.
        """
        async with self._lock:
            return await self._call()

    async def fresh(self, *, force: bool = False) -> bool:
        """Make sure the token a connect will use is not expired or about to: ask the
        callback for one if needed (or if ``force``). True if it did."""
        if self.callback is None:
            return False
        async with self._lock:
            token = self.token
            exp = token_expiry(token) if token is not None else None
            if not force and token is not None and (exp is None or exp - time.time() > FRESH_FOR_S):
                return False
            self.set(await self._call())
            return True

    async def _call(self) -> str:
        callback = self.callback
        assert callback is not None
        result = callback()
        token = await result if inspect.isawaitable(result) else result
        if not isinstance(token, str) or not token:
            raise TypeError(f"auth_callback must return a token string, not {token!r}")
        return token

    async def renew_forever(self, renew: Callable[[], Awaitable[bool]]) -> None:
        """Call ``renew`` when the token is due (:func:`renew_delay`), and again a little
        later while it returns False; start over whenever the token changes."""
        while True:
            self._changed.clear()
            exp = token_expiry(self.token) if self.token is not None else None
            if exp is None:
                await self._changed.wait()
                continue
            try:
                await asyncio.wait_for(self._changed.wait(), renew_delay(exp - time.time()))
                continue  # a reconnect brought a newer token: start over from it
            except TimeoutError:
                pass
            if not await renew():
                # Try again a little later (until the server closes the connection with 4001).
                remaining = exp - time.time()
                await asyncio.sleep(min(5.0, max(0.5, remaining / 4)))


__all__ = ["AuthCallback", "TokenKeeper", "renew_delay", "token_expiry"]
