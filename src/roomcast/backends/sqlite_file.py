"""What a roomcast SQLite file is: its schema and migrations, how a connection to it is
opened, the lock file that keeps other processes out, and how its rows hold values.

The writer thread (``sqlite_writer``) and the store's readers (``sqlite``) both use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from pathlib import Path

import msgspec

from roomcast.protocol.errors import Unavailable
from roomcast.protocol.messages import Event, Message, ObjectState

_BUSY_TIMEOUT_MS = 5000

# Schema migrations, applied in order at open, each a script of ;-separated statements;
# PRAGMA user_version counts those applied. Append new ones; never edit a released one.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE channels (name TEXT PRIMARY KEY, epoch TEXT NOT NULL, serial INTEGER NOT NULL,
        first_serial INTEGER NOT NULL, updated_at INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE events (channel TEXT NOT NULL, serial INTEGER NOT NULL,
        timestamp INTEGER NOT NULL, body BLOB NOT NULL,
        PRIMARY KEY (channel, serial)) WITHOUT ROWID;
    -- a rowid table: a streaming message's body grows, and is rewritten on every append
    CREATE TABLE messages (channel TEXT NOT NULL, msg_serial INTEGER NOT NULL,
        timestamp INTEGER NOT NULL, status TEXT NOT NULL, updated_at INTEGER NOT NULL,
        body BLOB NOT NULL, PRIMARY KEY (channel, msg_serial));
    CREATE INDEX messages_streaming ON messages (updated_at) WHERE status = 'streaming';
    CREATE TABLE idempotency (channel TEXT NOT NULL, id TEXT NOT NULL, serial INTEGER NOT NULL,
        expires_at INTEGER NOT NULL, PRIMARY KEY (channel, id)) WITHOUT ROWID;
    CREATE INDEX idempotency_expiry ON idempotency (expires_at);
    """,
    """
    ALTER TABLE channels ADD COLUMN objects_bytes INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE objects (channel TEXT NOT NULL, object_id TEXT NOT NULL, body BLOB NOT NULL,
        PRIMARY KEY (channel, object_id)) WITHOUT ROWID;
    """,
    """
    -- one row, rewritten by every write probe (at open, and on each /readyz)
    CREATE TABLE ready (id INTEGER PRIMARY KEY, at INTEGER NOT NULL);
    """,
    # The seed of the channels' epochs (local.channel_epoch): a channel's row is written at
    # its first event, with the epoch that reads reported before it.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    INSERT INTO meta VALUES ('epoch_seed', lower(hex(randomblob(8))));
    """,
)
EPOCH_SEED_SQL = "SELECT value FROM meta WHERE key = 'epoch_seed'"
SCHEMA_VERSION = len(_MIGRATIONS)


class StoreLocked(RuntimeError):
    """Another process has the SQLite file open (one process per file)."""


class SchemaTooNew(RuntimeError):
    """The file was written by a newer roomcast than this one."""


class StoreDamaged(RuntimeError):
    """The file fails SQLite's integrity check, or is not a database at all."""


class StoreUnwritable(RuntimeError):
    """The file takes no writes: read-only, immutable, locked by another program, or its
    disk is full or failing."""


# Rows hold JSON, the protocol's data model (msgpack cannot hold an integer past 64 bits).
# Encoders and decoders are thread-safe (msgspec >= 0.16): writer and readers share them.
encode_value = msgspec.json.Encoder().encode
decode_event = msgspec.json.Decoder(Event).decode
decode_message = msgspec.json.Decoder(Message).decode
decode_object = msgspec.json.Decoder(ObjectState).decode
decode_events = msgspec.json.Decoder(list[Event]).decode
decode_messages = msgspec.json.Decoder(list[Message]).decode
decode_objects = msgspec.json.Decoder(dict[str, ObjectState]).decode


def as_one_array(select: str) -> str:
    """A query for one row holding the ``body`` column of the rows ``select`` finds, as
    one JSON array (``[]`` for none; the order is not guaranteed: sort what it decodes to).

    sqlite3 gives up the interpreter lock around each step, and a step gives one row: a page
    of 200 rows read row by row crosses the lock 200 times, which the busy event loop makes
    slow. As one row it crosses it a few times, and decodes in one call.
    """
    return f"SELECT CAST('[' || ifnull(group_concat(body, ','), '') || ']' AS BLOB) FROM ({select})"


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the file, waiting up to 5 s for a lock another connection holds."""
    # isolation_level=None: we issue BEGIN/COMMIT ourselves. Each connection is opened, used
    # and closed by one thread (the writer's, the reader's, a probe's), so sqlite3's own
    # same-thread check (check_same_thread) is left off.
    conn = sqlite3.connect(
        path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    return conn


def take_lock(path: Path) -> int:
    """Lock ``<path>.lock`` (creating the directory if missing) and write this pid into it.

    Returns:
        The lock file's descriptor, for :func:`release_lock`.

    Raises:
        StoreLocked: Another process holds the lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreLocked(f"{path} is in use by another roomcast process (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release_lock(fd: int) -> None:
    """Release what :func:`take_lock` took."""
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _check(conn: sqlite3.Connection, path: Path) -> None:
    """SQLite's quick integrity check of every page (it reads the whole file once).

    Raises:
        StoreDamaged: The check found a problem, or the file is not a database.
    """
    advice = f"restore it from a backup, or salvage what is readable with `sqlite3 {path} .recover`"
    try:
        found = [str(row[0]) for row in conn.execute("PRAGMA quick_check(3)")]
    except sqlite3.DatabaseError as exc:
        raise StoreDamaged(f"{path} is damaged ({exc}): {advice}") from None
    if found != ["ok"]:
        problems = "; ".join(" ".join(problem.split()) for problem in found)
        raise StoreDamaged(f"{path} is damaged (integrity check: {problems}): {advice}")


def _probe_write(conn: sqlite3.Connection) -> None:
    """Commit one small write: the file, its journal and the disk take writes right now."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("INSERT OR REPLACE INTO ready VALUES (1, ?)", (int(time.time() * 1000),))
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # a failed COMMIT may have rolled back
            conn.execute("ROLLBACK")
        raise


def _unwritable(path: Path, exc: sqlite3.Error) -> str:
    return (
        f"{path} takes no writes ({exc}): check the file's and its directory's permissions "
        "and attributes (lsattr), that the file system is writable and has room, and that "
        "no other program holds the database locked"
    )


def probe_ready(path: Path) -> None:
    """Readiness: commit a small write on a connection of its own (blocking, up to the
    5 s busy timeout while another connection holds the write lock).

    Raises:
        Unavailable: The file takes no writes now.
    """
    try:
        conn = connect(path)
        try:
            _probe_write(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise Unavailable(_unwritable(path, exc)) from None


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Open checks, then the schema: check the file's integrity, bring its schema to
    :data:`SCHEMA_VERSION` (all or nothing), and prove that it takes a write.

    Raises:
        StoreDamaged: The file fails the integrity check, or is not a database.
        SchemaTooNew: A newer roomcast wrote the file.
        StoreUnwritable: The file takes no writes.
    """
    _check(conn, path)
    _upgrade(conn, path)
    try:
        _probe_write(conn)
    except sqlite3.Error as exc:
        raise StoreUnwritable(_unwritable(path, exc)) from None


def _upgrade(conn: sqlite3.Connection, path: Path) -> None:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has schema version {version}, written by a newer roomcast; this one "
            f"knows up to version {SCHEMA_VERSION}. Upgrade roomcast or use another file."
        )
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Not executescript(): it would commit, and a migration must be all or nothing.
        for script in _MIGRATIONS[version:]:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


__all__ = [
    "EPOCH_SEED_SQL",
    "SCHEMA_VERSION",
    "SchemaTooNew",
    "StoreDamaged",
    "StoreLocked",
    "StoreUnwritable",
    "as_one_array",
    "connect",
    "decode_event",
    "decode_events",
    "decode_message",
    "decode_messages",
    "decode_object",
    "decode_objects",
    "encode_value",
    "migrate",
    "probe_ready",
    "release_lock",
    "take_lock",
]
