"""Waiting for a state that a test cannot be told about (the SDK reconnects on its own)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def eventually(predicate: Callable[[], bool | Awaitable[bool]], within: float = 10.0) -> None:
    """Return once ``predicate()`` is true; fail with TimeoutError after ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.01)
