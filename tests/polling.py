"""Waiting for a state that a test cannot be told about (the SDK reconnects on its own)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]], within: float = 10.0, what: str = ""
) -> None:
    """Return once ``predicate()`` (sync or async) is true; fail after ``within`` seconds,
    with a TimeoutError that says ``what`` was awaited."""
    try:
        async with asyncio.timeout(within):
            while True:
                result = predicate()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise TimeoutError(f"not within {within:g} s: {what or predicate}") from None
