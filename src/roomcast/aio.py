"""Stopping asyncio tasks for certain.

A cancel can be lost. On Python 3.11, ``asyncio.wait_for`` returns the awaited result
instead of raising when the cancel arrives in the instant that result becomes ready (3.12
rewrote it on ``asyncio.timeout``). redis-py wraps every command's send in ``wait_for``
(its default socket timeout is 5 s), so a task cancelled as a Redis command's send
completes goes on as if nothing happened. A loop cancelled that way never ends, and
whoever awaits it waits for ever: a node that will not stop on SIGTERM.

Everything here sits on the ground floor (asyncio only), for every layer that owns tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

# How long a cancelled task has to end before it is cancelled again (it may have lost the
# cancel). Long enough that a task ending on its own is not interrupted in its cleanup.
RECANCEL_S = 0.5


async def cancel_and_wait(task: asyncio.Task[Any], *, recancel_s: float = RECANCEL_S) -> None:
    """Cancel ``task`` and return once it has ended, cancelling again every ``recancel_s``
    while it runs on (the cancel was lost). An error the task ended with is raised here;
    its cancellation is not. Cancelling the caller leaves the task cancelled but running."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=recancel_s)
    with contextlib.suppress(asyncio.CancelledError):
        await task


__all__ = ["RECANCEL_S", "cancel_and_wait"]
