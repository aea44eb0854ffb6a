"""The SQLite writer's transactions, run directly on its connection: what it reads back from
the file, and what it must not take from memory."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roomcast.backends.base import Appended, StoreOptions
from roomcast.backends.local import now_ms
from roomcast.backends.sqlite_writer import Work, _WriteConnection
from roomcast.protocol.errors import Conflict, NotFound
from roomcast.protocol.messages import Event

CH = "room:writer"
READ_MESSAGE = "SELECT body FROM messages"


def event(type_: Any, **fields: Any) -> Event:
    return Event(channel=CH, serial=0, type=type_, client_id="alice", timestamp=0, **fields)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[_WriteConnection]:
    conn = _WriteConnection(tmp_path / "store.db", StoreOptions())
    yield conn
    conn.conn.close()


def write(writer: _WriteConnection, event: Event) -> Appended:
    """One transaction holding ``event``; its result, or the error it was refused with."""
    work = Work("append", asyncio.get_running_loop().create_future(), [event], [None])
    writer.transaction([work])
    if work.error is not None:
        raise work.error
    assert isinstance(work.result, Appended)
    return work.result


def reads_of_messages(statements: list[str]) -> int:
    return sum(s.startswith(READ_MESSAGE) for s in statements)


async def test_a_streaming_message_is_read_from_the_file_once_across_transactions(
    writer: _WriteConnection,
) -> None:
    statements: list[str] = []
    writer.conn.set_trace_callback(statements.append)
    created = write(writer, event("create", data="", streaming=True, extras={}))
    assert created.serial == 1
    for word in ("one ", "two ", "three"):  # one transaction each, as a steady stream gets
        write(writer, event("append", msg_serial=1, data=word))
    write(writer, event("update", msg_serial=1, status="complete"))
    assert reads_of_messages(statements) == 0
    # Ended, it is forgotten: what comes next is checked against the file.
    with pytest.raises(Conflict):
        write(writer, event("append", msg_serial=1, data="late"))
    assert reads_of_messages(statements) == 1
    row = writer.conn.execute("SELECT status FROM messages WHERE msg_serial = 1").fetchone()
    assert row == ("complete",)


async def test_a_purge_that_deletes_a_streaming_message_leaves_nothing_of_it_in_memory(
    writer: _WriteConnection,
) -> None:
    write(writer, event("create", data="", streaming=True, extras={}))
    write(writer, event("append", msg_serial=1, data="kept in memory"))
    later = now_ms() + 60_000
    purge = Work("purge", asyncio.get_running_loop().create_future(), now_ms=later, retention_ms=1)
    writer.transaction([purge])
    assert purge.error is None and purge.result == 2
    with pytest.raises(NotFound):
        write(writer, event("append", msg_serial=1, data="after the purge"))


async def test_a_transaction_leaves_no_cyclic_garbage(writer: _WriteConnection) -> None:
    """What a transaction stages (its views of channels, their copies of the heads) is
    freed when it ends, not left for the garbage collector, whose passes stall the loop."""
    loop = asyncio.get_running_loop()
    created = write(writer, event("create", data="", streaming=True))
    gc.collect()
    gc.disable()
    try:
        for k in range(20):
            items = [event("append", msg_serial=created.serial, data=f"{k}")]
            other = Event(channel=f"{CH}{k}", serial=0, type="create", client_id="b", timestamp=0)
            items.append(other)
            batch = Work("batch", loop.create_future(), items, [None, None])
            single = Work("append", loop.create_future(), [event("create", data=k)], [None])
            writer.transaction([batch, single])
            assert batch.error is None and single.error is None
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        kinds = {type(o).__qualname__ for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not kinds & {"_Stage", "_ChannelStage", "ChannelHead"}
