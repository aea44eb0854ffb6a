"""Reconnect delays: exponential backoff with full jitter.

Full jitter (a delay drawn uniformly between 0 and the exponential cap) spreads the
reconnects of many clients that lost the same server at the same moment, so they do not come
back as one wave.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays for successive reconnect attempts.

    Attempt ``n`` (from 0) waits ``uniform(0, min(maximum, initial * multiplier ** n))``.
    The client calls :meth:`reset` once a connection has stayed up, so the next drop starts
    again from ``initial``. Pass your own instance (or a subclass) to
    :func:`roomcast.client.connect` to change the policy; tests pass a seeded ``rng``.

    Args:
        initial: The cap of the first delay, in seconds.
        maximum: The largest cap, in seconds.
        multiplier: How much the cap grows per attempt.
        rng: A function returning a float in [0, 1).
    """

    def __init__(
        self,
        initial: float = 0.1,
        maximum: float = 10.0,
        multiplier: float = 2.0,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if initial <= 0 or maximum < initial or multiplier < 1:
            raise ValueError("need 0 < initial <= maximum and multiplier >= 1")
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self._rng = rng
        self.attempts = 0

    def cap(self) -> float:
        """The largest delay the next attempt may get."""
        # min() before the power would overflow for a long outage; stop growing at the cap.
        exponent = min(self.attempts, 64)
        return float(min(self.maximum, self.initial * self.multiplier**exponent))

    def next_delay(self) -> float:
        """The delay before the next attempt; counts the attempt."""
        delay = self._rng() * self.cap()
        self.attempts += 1
        return delay

    def next_delay_after(self, retry_after: float | None) -> float:
        """The delay before the next attempt when the server refused the last one and asked
        to wait ``retry_after`` seconds (its ``Retry-After``; None if it did not say).

        At least what it asked, capped at ``maximum`` so a server cannot park a client for
        long, and spread over up to a fifth more so clients told alike do not come back
        together; the backoff's own draw when that is longer. Counts the attempt.
        """
        delay = self.next_delay()
        if retry_after is None or retry_after <= 0:
            return delay
        asked = min(retry_after, self.maximum)
        spread = min(self.maximum, asked * 1.2) - asked
        return max(delay, asked + self._rng() * spread)

    def reset(self) -> None:
        """Start over from ``initial`` (after a connection that stayed up)."""
        self.attempts = 0
