"""An author stops its own stream: ``MessageStream.cancel()`` ends the message ``cancelled``
with the author as ``cancelled_by`` (not ``failed``), as anonymous clients may by default."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from roomcast.client import Cancelled, Event, connect
from roomcast.testing import ServerProcess


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(env={"ROOMCAST_PUBLISH_RATE": "0", "ROOMCAST_LOG_LEVEL": "warning"}) as s:
        yield s


async def test_the_author_cancels_its_own_stream(server: ServerProcess, channel_name: str) -> None:
    async with (
        connect(server.url, client_id="poet") as poet,
        connect(server.url, client_id="reader") as reader,
    ):
        seen: list[Event] = []
        watching = await reader.channels.get(channel_name).subscribe(seen.append)
        async with poet.channels.get(channel_name).stream() as verse:
            await verse.append("roses are ")
            await verse.cancel()
            assert verse.cancelled.is_set()
            with pytest.raises(Cancelled):
                await verse.append("red")  # nothing more after one's own cancel
        assert verse.status == "cancelled"
        async for page in reader.channels.get(channel_name).history(limit=1):
            [message] = page.messages
        assert (message.status, message.cancelled_by) == ("cancelled", "poet")
        assert message.data == "roses are " and "failure" not in message.extras
        while len(seen) < 4:  # noqa: ASYNC110 - a plain list
            await asyncio.sleep(0.02)
        assert [(e.type, e.client_id) for e in seen] == [
            ("create", "poet"),
            ("append", "poet"),
            ("cancel", "poet"),
            ("update", "poet"),
        ]
        await watching.aclose()
