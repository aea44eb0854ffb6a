"""A transaction's rows in one statement (the ``writes`` view): one trip through sqlite3 per
commit, and all or nothing."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roomcast.backends.base import StoreOptions
from roomcast.backends.sqlite_writer import Work, _WriteConnection
from roomcast.protocol.errors import Unavailable
from roomcast.protocol.messages import Event

CH = "room:rows"


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[_WriteConnection]:
    conn = _WriteConnection(tmp_path / "store.db", StoreOptions())
    yield conn
    conn.conn.close()


def creates(count: int) -> Work:
    """One work item of ``count`` message creates."""
    events = [
        Event(channel=CH, serial=0, type="create", client_id="a", timestamp=0, data=i, extras={})
        for i in range(count)
    ]
    return Work("batch", asyncio.get_running_loop().create_future(), events, [None] * count)


def stored_serials(writer: _WriteConnection) -> list[int]:
    return [s for (s,) in writer.conn.execute("SELECT serial FROM events ORDER BY serial")]


class CountedConnection:
    """The writer's connection, with each ``execute`` call written down."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.executed: list[str] = []

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self.executed.append(sql)
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


async def test_a_transaction_writes_its_rows_in_one_statement(
    writer: _WriteConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sqlite3 gives the interpreter lock up around every statement: one per transaction.
    counted = CountedConnection(writer.conn)
    monkeypatch.setattr(writer, "conn", counted)
    work = [creates(3), creates(2)]
    writer.transaction(work)
    assert [w.error for w in work] == [None, None]
    writes = [s for s in counted.executed if not s.startswith("SELECT")]  # the head, read once
    assert len(writes) == 1 and writes[0].startswith("INSERT INTO writes"), writes
    assert stored_serials(writer) == [1, 2, 3, 4, 5]
    count = writer.conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    head = writer.conn.execute("SELECT serial FROM channels WHERE name = ?", (CH,)).fetchone()
    assert (count, head) == (5, (5,))


@pytest.mark.parametrize("rows_per_statement", [4096, 8])
async def test_a_failed_write_leaves_none_of_its_rows(
    writer: _WriteConnection, monkeypatch: pytest.MonkeyPatch, rows_per_statement: int
) -> None:
    # With 8 rows per statement, the batch takes several statements in one transaction.
    monkeypatch.setattr("roomcast.backends.sqlite_rows.MAX_ROWS", rows_per_statement)
    writer.conn.execute(
        "CREATE TEMP TRIGGER refuse BEFORE INSERT ON events WHEN new.serial = 9"
        " BEGIN SELECT RAISE(ABORT, 'disk trouble'); END"
    )
    work = creates(10)
    writer.transaction([work])
    assert isinstance(work.error, Unavailable)
    assert stored_serials(writer) == []
    assert writer.conn.execute("SELECT count(*) FROM messages").fetchone() == (0,)
    writer.conn.execute("DROP TRIGGER refuse")
    again = creates(10)
    writer.transaction([again])
    assert again.error is None
    assert stored_serials(writer) == list(range(1, 11))
