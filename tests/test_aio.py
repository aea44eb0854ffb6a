"""cancel_and_wait: a task that loses its cancel is still stopped."""

from __future__ import annotations

import asyncio
import sys

import pytest

from roomcast.aio import cancel_and_wait


async def _ready_at_the_cancel(task_box: list[asyncio.Task[None]], turns: list[int]) -> None:
    """A loop whose every wait_for gets its result in the same instant as a cancel, as a
    Redis command's send does when a shutdown cancels the task that sent it."""
    loop = asyncio.get_running_loop()
    while True:
        result: asyncio.Future[None] = loop.create_future()

        def ready_and_cancel(result: asyncio.Future[None] = result) -> None:
            result.set_result(None)
            task_box[0].cancel()

        loop.call_soon(ready_and_cancel)
        await asyncio.wait_for(result, 5)  # 3.11: the result, and the cancel is lost
        turns.append(1)
        await asyncio.sleep(0.01)


async def test_a_task_that_lost_its_cancel_is_cancelled_again_until_it_ends() -> None:
    box: list[asyncio.Task[None]] = []
    turns: list[int] = []
    task = asyncio.create_task(_ready_at_the_cancel(box, turns))
    box.append(task)
    await asyncio.wait_for(cancel_and_wait(task, recancel_s=0.05), 10)
    assert task.cancelled()
    if sys.version_info < (3, 12):  # the loss this guards against: the loop went on
        assert task.cancelling() > 1 and turns


async def test_a_task_that_honours_its_cancel_is_cancelled_once_and_may_clean_up() -> None:
    cleaned: list[str] = []

    async def sleeper() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.1)  # cleanup shorter than the re-cancel interval
            cleaned.append("done")

    task = asyncio.create_task(sleeper())
    await asyncio.sleep(0)
    await cancel_and_wait(task, recancel_s=1)
    assert task.cancelled() and task.cancelling() == 1 and cleaned == ["done"]


async def test_the_error_a_task_ended_with_is_raised() -> None:
    async def fails() -> None:
        raise ValueError("broken")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="broken"):
        await cancel_and_wait(task)


async def test_a_task_already_done_is_left_as_it_is() -> None:
    task = asyncio.create_task(asyncio.sleep(0))
    await task
    await cancel_and_wait(task)
    assert not task.cancelled()
