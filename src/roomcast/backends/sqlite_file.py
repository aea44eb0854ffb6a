"""What a roomcast SQLite file is: its schema and migrations, how a connection to it is
opened, the lock file that keeps other processes out, and how its rows hold values.

The writer thread (``sqlite_writer``) and the store's readers (``sqlite``) both use it.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path

import msgspec

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
)
SCHEMA_VERSION = len(_MIGRATIONS)


class StoreLocked(RuntimeError):
    """Another process has the SQLite file open (one process per file)."""


class SchemaTooNew(RuntimeError):
    """The file was written by a newer roomcast than this one."""


# Rows hold JSON, the protocol's data model (msgpack cannot hold an integer past 64 bits).
# Encoders and decoders are thread-safe (msgspec >= 0.16): writer and readers share them.
encode_value = msgspec.json.Encoder().encode
decode_event = msgspec.json.Decoder(Event).decode
decode_message = msgspec.json.Decoder(Message).decode
decode_object = msgspec.json.Decoder(ObjectState).decode


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the file, waiting up to 5 s for a lock another connection holds."""
    # isolation_level=None: we issue BEGIN/COMMIT ourselves. check_same_thread=False only so
    # aclose can close reader connections; each connection is used by one thread at a time.
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


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the file's schema to :data:`SCHEMA_VERSION`, all or nothing.

    Raises:
        SchemaTooNew: A newer roomcast wrote the file.
    """
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
    "SCHEMA_VERSION",
    "SchemaTooNew",
    "StoreLocked",
    "connect",
    "decode_event",
    "decode_message",
    "decode_object",
    "encode_value",
    "migrate",
    "release_lock",
    "take_lock",
]
