"""The SQLite store's reader thread (backends/sqlite_reader.py): the reads asked for in one
turn of the event loop run together on the thread, each caller gets its own result or
error, and a closed reader refuses reads."""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from roomcast.backends.sqlite_file import connect
from roomcast.backends.sqlite_reader import SqliteReader
from roomcast.protocol.errors import Unavailable


class CountingQueue(queue.SimpleQueue[Any]):
    """The reader's queue, counting the batches handed to the thread."""

    puts = 0

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.puts += 1
        super().put(item, block, timeout)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    db = tmp_path / "r.db"
    conn = connect(db)
    conn.execute("CREATE TABLE t (n INTEGER)")
    conn.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(10)])
    conn.commit()
    conn.close()
    return db


async def test_reads_of_one_turn_run_together_on_the_thread_each_with_its_result(
    path: Path,
) -> None:
    reader = SqliteReader(path)
    reader._queue = batches = CountingQueue()
    reader.start()
    seen: list[tuple[str, int]] = []  # (thread, value) of each read, in the order run

    def value(n: int) -> object:
        def read(conn: sqlite3.Connection) -> int:
            seen.append((threading.current_thread().name, n))
            (found,) = conn.execute("SELECT n FROM t WHERE n = ?", (n,)).fetchone()
            return int(found)

        return read

    def fails(conn: sqlite3.Connection) -> int:
        raise ValueError("not this one")

    try:
        first = [asyncio.ensure_future(reader.read(value(n))) for n in range(5)]
        failing = asyncio.ensure_future(reader.read(fails))
        cancelled = asyncio.ensure_future(reader.read(value(9)))
        await asyncio.sleep(0)  # the reads are asked for; the batch goes at the turn's end
        cancelled.cancel()
        assert [await f for f in first] == [0, 1, 2, 3, 4]
        with pytest.raises(ValueError, match="not this one"):
            await failing
        assert batches.puts == 1  # seven reads, one hand-over to the thread
        assert await reader.read(value(7)) == 7  # a later turn: a batch of its own
        assert batches.puts == 2
        assert {name for name, _ in seen} == {"roomcast-sqlite-reader"}
        assert [n for _, n in seen] == [0, 1, 2, 3, 4, 9, 7]
    finally:
        await reader.stop()
    with pytest.raises(Unavailable, match="closed"):
        await reader.read(value(1))


async def test_reads_asked_for_just_before_stop_still_run(path: Path) -> None:
    reader = SqliteReader(path)
    reader.start()
    reads = [asyncio.ensure_future(reader.read(lambda c: c.execute("SELECT 1").fetchone()))]
    await asyncio.sleep(0)  # asked for, not yet handed over
    await reader.stop()
    assert await reads[0] == (1,)


async def test_a_file_that_cannot_be_opened_fails_each_read_not_the_thread(
    tmp_path: Path,
) -> None:
    reader = SqliteReader(tmp_path / "missing" / "r.db")
    reader.start()
    try:
        for _ in range(2):
            with pytest.raises(sqlite3.OperationalError):
                await reader.read(lambda c: c.execute("SELECT 1").fetchone())
    finally:
        await reader.stop()


async def test_a_reader_started_again_after_stop_reads_again(path: Path) -> None:
    reader = SqliteReader(path)
    for _ in range(2):  # a store closed and opened again
        reader.start()
        try:
            assert await reader.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()) == (
                10,
            )
        finally:
            await reader.stop()


async def test_a_read_that_raises_stop_iteration_fails_its_caller_only(path: Path) -> None:
    reader = SqliteReader(path)
    reader.start()
    try:

        def stops(conn: sqlite3.Connection) -> int:
            return int(next(iter(())))

        failing = asyncio.ensure_future(reader.read(stops))
        fine = asyncio.ensure_future(reader.read(lambda c: c.execute("SELECT 2").fetchone()))
        with pytest.raises(RuntimeError, match="StopIteration"):
            await failing
        assert await fine == (2,)
    finally:
        await reader.stop()
