"""How the SQLite writer's rows reach the file: one statement per transaction.

Every row a transaction writes goes in through one statement: an INSERT of many rows into
a temporary view, ``writes``, whose triggers put each row in its table by its first column.
sqlite3 gives up the interpreter lock around each step of each statement, and winning it
back from the busy event loop costs more than the rows themselves: one statement per
transaction, instead of a BEGIN, an INSERT per table and a COMMIT, cuts those trips from
about twenty to about four. One statement is atomic on its own, so it needs no BEGIN and
no COMMIT.
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Any

ROW_WIDTH = 7  # what the row is, then the widest table's 6 columns
EVENT, MESSAGE, KEY, OBJECT, CHANNEL = 1, 2, 3, 4, 5  # 0 pads a statement: no trigger
WRITES_VIEW = f"""
CREATE TEMP VIEW writes (kind, a, b, c, d, e, f) AS
    SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL WHERE 0;
CREATE TEMP TRIGGER write_event INSTEAD OF INSERT ON writes WHEN new.kind = {EVENT} BEGIN
    INSERT INTO events VALUES (new.a, new.b, new.c, new.d);
END;
CREATE TEMP TRIGGER write_message INSTEAD OF INSERT ON writes WHEN new.kind = {MESSAGE} BEGIN
    INSERT INTO messages VALUES (new.a, new.b, new.c, new.d, new.e, new.f)
    ON CONFLICT (channel, msg_serial) DO UPDATE
    SET status = excluded.status, updated_at = excluded.updated_at, body = excluded.body;
END;
CREATE TEMP TRIGGER write_key INSTEAD OF INSERT ON writes WHEN new.kind = {KEY} BEGIN
    INSERT OR REPLACE INTO idempotency VALUES (new.a, new.b, new.c, new.d);
END;
CREATE TEMP TRIGGER write_object INSTEAD OF INSERT ON writes WHEN new.kind = {OBJECT} BEGIN
    INSERT OR REPLACE INTO objects VALUES (new.a, new.b, new.c);
END;
CREATE TEMP TRIGGER write_channel INSTEAD OF INSERT ON writes WHEN new.kind = {CHANNEL} BEGIN
    INSERT INTO channels VALUES (new.a, new.b, new.c, new.d, new.e, new.f)
    ON CONFLICT (name) DO UPDATE SET serial = excluded.serial,
    first_serial = excluded.first_serial, updated_at = excluded.updated_at,
    objects_bytes = excluded.objects_bytes;
END;
"""
# Rows per statement: 4,096 rows of 7 = 28,672 values, under SQLite's limit of 32,766. A statement
# is padded to the next power of two rows (at least 8), so sqlite3 caches a few statements
# instead of compiling one per row count.
MAX_ROWS = 4096
_MIN_ROWS = 8
_PAD = (0, None, None, None, None, None, None)


@functools.cache
def _statement(rows: int) -> str:
    return "INSERT INTO writes VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * rows)


def _padded(rows: int) -> int:
    """The smallest cached statement size that holds ``rows``."""
    size = _MIN_ROWS
    while size < rows:
        size *= 2
    return size


def create_writes_view(conn: sqlite3.Connection) -> None:
    """Create the ``writes`` view and its triggers (temporary: for this connection only)."""
    conn.executescript(WRITES_VIEW)


def fits_one_statement(rows: list[tuple[Any, ...]]) -> bool:
    """Whether :func:`write_rows` writes ``rows`` with one statement (atomic by itself)."""
    return len(rows) <= MAX_ROWS


def write_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Write ``rows`` (each ``ROW_WIDTH`` values, its kind first): one statement per
    ``MAX_ROWS``, padded to a cached size."""
    for start in range(0, len(rows), MAX_ROWS):
        chunk = rows[start : start + MAX_ROWS]
        size = _padded(len(chunk))
        chunk += [_PAD] * (size - len(chunk))
        conn.execute(_statement(size), [value for row in chunk for value in row])


__all__ = [
    "CHANNEL",
    "EVENT",
    "KEY",
    "MAX_ROWS",
    "MESSAGE",
    "OBJECT",
    "ROW_WIDTH",
    "create_writes_view",
    "fits_one_statement",
    "write_rows",
]
