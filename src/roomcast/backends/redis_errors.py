"""How a failure of the Redis store reaches its callers: as ``Unavailable`` (50300), saying
where and what, and in the log once per outage however many requests fail meanwhile."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from roomcast.protocol.errors import Unavailable

from .redis_bus import describe

# The store's logger: logs name it, and operators filter on it.
log = logging.getLogger("roomcast.backends.redis_store")


class RedisErrors:
    """Turns the Redis errors of a block into ``Unavailable``, and remembers an outage.

    Args:
        where: The store's address, for messages (never a password).
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self._down = False  # the last request could not reach Redis (said once in the log)

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        """Redis errors in the block become 50300, with where and what."""
        from redis.exceptions import (
            ConnectionError,
            RedisClusterException,
            RedisError,
            TimeoutError,
        )

        try:
            yield
        # A cluster client's own errors: no node answers, a slot that no master holds.
        except (ConnectionError, TimeoutError, OSError, RedisClusterException) as exc:
            if not self._down:  # said once per outage, however many requests fail meanwhile
                self._down = True
                log.warning(
                    "the Redis store at %s is unreachable (%s): reads and writes are refused "
                    "with 50300 until it answers again",
                    self.where,
                    describe(exc),
                )
            raise Unavailable(f"the Redis store at {self.where} failed: {describe(exc)}") from exc
        except RedisError as exc:
            raise Unavailable(f"the Redis store at {self.where} failed: {describe(exc)}") from exc
        if self._down:
            self._down = False
            log.warning("the Redis store at %s is reachable again", self.where)


__all__ = ["RedisErrors"]
