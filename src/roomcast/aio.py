"""Stopping asyncio tasks for certain, and seeing where they stand.

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
import io
import logging
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


def log_tasks() -> None:
    """Where each task of the running loop stands, logged as one warning of the
    ``roomcast`` logger: the SIGUSR1 handler of ``roomcast serve`` and ``roomcast agents``
    (for a process that seems stuck: ``kill -USR1 PID``)."""
    tasks = asyncio.all_tasks()
    lines = [f"SIGUSR1: {len(tasks)} tasks"]
    for task in tasks:
        stack = io.StringIO()
        task.print_stack(limit=12, file=stack)
        lines.append(stack.getvalue().rstrip())
    logging.getLogger("roomcast").warning("\n".join(lines))


__all__ = ["RECANCEL_S", "cancel_and_wait", "log_tasks"]
