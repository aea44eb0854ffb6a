"""``sqlite:///path``: the embedded default. One process per file, durable, zero setup.

Writes go through ONE writer thread that owns its own connection (``sqlite_writer``): it
takes everything queued, applies it in one transaction, commits, and only then resolves the
callers' futures and hands the events to the bus. Reads run on one reader thread with its
own connection (``sqlite_reader``; WAL lets it read while the writer writes). The file itself
(schema, migrations, lock file) is ``sqlite_file``.
"""

from __future__ import annotations

import asyncio
import operator
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from roomcast.protocol import objects as live
from roomcast.protocol.messages import Event, Message, ObjectsSnapshot, ObjectState

from .apply import QueuedAppends
from .base import REPLAY_PAGE, ChannelInfo, Snapshot, Store, StoreOptions
from .local import LocalBus, LocalEphemeralState, channel_epoch
from .sqlite_file import (
    EPOCH_SEED_SQL,
    SCHEMA_VERSION,
    SchemaTooNew,
    StoreLocked,
    as_one_array,
    decode_event,
    decode_events,
    decode_message,
    decode_messages,
    decode_object,
    decode_objects,
    probe_ready,
    release_lock,
    take_lock,
)
from .sqlite_reader import SqliteReader
from .sqlite_writer import SqliteWriter, Work

T = TypeVar("T")


def _message_row(row: tuple[bytes]) -> Message:
    return decode_message(row[0])


_BY_SERIAL = operator.attrgetter("serial")
_BY_MSG_SERIAL = operator.attrgetter("msg_serial")
_NEWEST = 2**63 - 1  # a msg_serial past every message
_EVENTS_AFTER = (
    "SELECT body FROM events WHERE channel = :channel AND serial > :after"
    " ORDER BY serial LIMIT :events"
)
_MESSAGES_AFTER = (
    "SELECT body FROM messages WHERE channel = :channel AND msg_serial > :after"
    " ORDER BY msg_serial LIMIT :messages"
)
_MESSAGES_BEFORE = (
    "SELECT body FROM messages WHERE channel = :channel AND msg_serial < :before"
    " ORDER BY msg_serial DESC LIMIT :messages"
)
# A channel's snapshot in one statement (one read, consistent without a transaction, and one
# row): its head, and as JSON its last :messages messages, the events after :after (when the
# log still holds them all) and its live objects (when :objects).
_SNAPSHOT = f"""
SELECT epoch, serial, first_serial,
    CASE WHEN :messages > 0 THEN ({as_one_array(_MESSAGES_BEFORE)}) END,
    CASE WHEN :after BETWEEN first_serial - 1 AND serial THEN ({as_one_array(_EVENTS_AFTER)}) END,
    CASE WHEN :objects THEN (
        SELECT CAST('{{' || ifnull(group_concat(json_quote(object_id) || ':'
            || CAST(body AS TEXT), ','), '') || '}}' AS BLOB)
        FROM objects WHERE channel = :channel
    ) END
FROM channels WHERE name = :channel
"""


def _events(page: list[Event]) -> list[Event]:
    page.sort(key=_BY_SERIAL)
    return page


def _messages(page: list[Message]) -> list[Message]:
    page.sort(key=_BY_MSG_SERIAL)
    return page


def _page(
    conn: sqlite3.Connection,
    query: str,
    args: dict[str, Any],
    decode_all: Callable[[bytes], list[T]],
    decode_one: Callable[[bytes], T],
) -> list[T]:
    """What ``query`` finds, read as one row; row by row if that row would be past SQLite's
    largest string (1 GB: a thousand of the largest streamed messages)."""
    try:
        return decode_all(conn.execute(as_one_array(query), args).fetchone()[0])
    except sqlite3.DataError:  # "string or blob too big"
        return [decode_one(body) for (body,) in conn.execute(query, args)]


def _read_events(conn: sqlite3.Connection, channel: str, after: int, limit: int) -> list[Event]:
    """Up to ``limit`` events after ``after``, in serial order."""
    args = {"channel": channel, "after": after, "events": limit}
    return _events(_page(conn, _EVENTS_AFTER, args, decode_events, decode_event))


def _read_messages(
    conn: sqlite3.Connection, channel: str, *, before: int | None, after: int | None, limit: int
) -> list[Message]:
    """Up to ``limit`` messages just before ``before`` (default: the newest) or just after
    ``after``, oldest first."""
    if after is not None:
        query, args = _MESSAGES_AFTER, {"channel": channel, "after": after, "messages": limit}
    else:
        bound = _NEWEST if before is None else before
        query, args = _MESSAGES_BEFORE, {"channel": channel, "before": bound, "messages": limit}
    return _messages(_page(conn, query, args, decode_messages, decode_message))


def _read_snapshot(
    conn: sqlite3.Connection,
    channel: str,
    *,
    from_serial: int | None,
    rewind: int,
    replay_limit: int,
    objects: bool,
) -> Snapshot:
    args = {
        "channel": channel,
        "before": _NEWEST,
        "messages": rewind,
        "after": from_serial,
        "events": replay_limit,
        "objects": objects,
    }
    try:
        row = conn.execute(_SNAPSHOT, args).fetchone()
    except sqlite3.DataError:  # past SQLite's largest string: the parts one by one
        conn.execute("BEGIN")  # one read transaction: everything as of the same serial
        try:
            return _read_snapshot_in_parts(conn, args)
        finally:
            conn.execute("COMMIT")
    if row is None:
        return _no_events_yet(conn, channel, from_serial, objects)
    epoch, serial, first, message_page, event_page, object_page = row
    messages = [] if message_page is None else _messages(decode_messages(message_page))
    events = None if event_page is None else _events(decode_events(event_page))
    snap_objects = None
    if object_page is not None:
        found = live.with_root(decode_objects(object_page))
        snap_objects = ObjectsSnapshot(serial=serial, objects=found)
    return Snapshot(epoch, serial, first, messages, events, snap_objects)


def _no_events_yet(
    conn: sqlite3.Connection, channel: str, from_serial: int | None, objects: bool
) -> Snapshot:
    """A channel with no event: the epoch its first event will fix (not stored), no log."""
    seed = conn.execute(EPOCH_SEED_SQL).fetchone()[0]
    empty = ObjectsSnapshot(serial=0, objects=live.with_root({})) if objects else None
    replay: list[Event] | None = [] if from_serial == 0 else None
    return Snapshot(channel_epoch(seed, channel), 0, 1, [], replay, empty)


def _read_snapshot_in_parts(conn: sqlite3.Connection, args: dict[str, Any]) -> Snapshot:
    """:func:`_read_snapshot` in several reads, pages row by row (inside a transaction)."""
    channel, after = args["channel"], args["after"]
    head = conn.execute(
        "SELECT epoch, serial, first_serial FROM channels WHERE name = ?", (channel,)
    ).fetchone()
    if head is None:
        return _no_events_yet(conn, channel, after, args["objects"])
    epoch, serial, first = head
    messages: list[Message] = []
    if args["messages"] > 0:
        messages = _messages(_page(conn, _MESSAGES_BEFORE, args, decode_messages, decode_message))
    events = None
    if after is not None and first - 1 <= after <= serial:
        events = _events(_page(conn, _EVENTS_AFTER, args, decode_events, decode_event))
    snap_objects = None
    if args["objects"]:
        rows = conn.execute("SELECT object_id, body FROM objects WHERE channel = ?", (channel,))
        found = {object_id: decode_object(body) for object_id, body in rows}
        snap_objects = ObjectsSnapshot(serial=serial, objects=live.with_root(found))
    return Snapshot(epoch, serial, first, messages, events, snap_objects)


class SqliteStore(QueuedAppends, LocalEphemeralState, Store):
    """The Store in one SQLite file (WAL mode), for one server process.

    Appends are queued to a dedicated writer thread, which group-commits everything queued
    (up to 1000 writes per transaction) and then, on the event loop, resolves each caller's
    future and hands the events to the bus in serial order. Callers' call order is the serial
    order. An ``ok`` means the transaction committed (``synchronous=NORMAL``: it survives a
    crash of the process, not necessarily a power loss). A per-channel counter in the
    ``channels`` table assigns serials in the same transaction that stores the event, so serials
    continue without a gap after a crash. Reads run on a reader thread; a snapshot is one
    read transaction.

    A lock file (``<path>.lock``, holding the pid) keeps other processes out, which is what
    makes the in-memory presence, claims, counters and sessions of
    :class:`LocalEphemeralState` correct.

    Args:
        path: The database file; its directory is created if missing.
        bus: The in-process bus the events are emitted to after commit.
        options: Dedup window and stream size limit.

    Raises:
        StoreLocked: From :meth:`open`, if another process holds the file.
        SchemaTooNew: From :meth:`open`, if a newer roomcast wrote the file.
    """

    bus: LocalBus
    _writer: SqliteWriter

    def __init__(self, path: Path, bus: LocalBus, options: StoreOptions | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.bus = bus
        self.options = options or StoreOptions()
        self._writer = SqliteWriter(self.path, self.options, bus.emit)
        self._lock_fd: int | None = None
        self._reader = SqliteReader(self.path)

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self._writer.running:
            return
        lock_fd = await asyncio.to_thread(take_lock, self.path)
        try:
            await self._writer.start()
        except BaseException:
            release_lock(lock_fd)
            raise
        self._lock_fd = lock_fd
        self._reader.start()

    async def aclose(self) -> None:
        if not self._writer.running:
            return
        await self._writer.stop()
        await self._reader.stop()
        if self._lock_fd is not None:
            release_lock(self._lock_fd)
            self._lock_fd = None

    async def ping(self) -> None:
        """Readiness (``/readyz``): a small committed write, not a read, so that it fails
        while the file takes no writes (read-only or immutable, locked by another program,
        a full or failing disk)."""
        await self._read(lambda _: probe_ready(self.path))

    # ------------------------------------------------------------ writes

    def _future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def purge(self, now_ms: int, retention_ms: int) -> int:
        work = Work("purge", self._future(), now_ms=now_ms, retention_ms=retention_ms)
        dropped: int = await self._writer.submit(work)
        return dropped

    # ------------------------------------------------------------ reads

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._reader.read(fn)

    async def snapshot(
        self,
        channel: str,
        *,
        from_serial: int | None,
        rewind: int,
        replay_limit: int = REPLAY_PAGE,
        objects: bool = False,
    ) -> Snapshot:
        return await self._read(
            lambda conn: _read_snapshot(
                conn,
                channel,
                from_serial=from_serial,
                rewind=rewind,
                replay_limit=replay_limit,
                objects=objects,
            )
        )

    async def _query(self, sql: str, args: tuple[Any, ...], row: Callable[[Any], T]) -> list[T]:
        return await self._read(lambda conn: [row(r) for r in conn.execute(sql, args)])

    async def read_events(self, channel: str, after: int, limit: int) -> list[Event]:
        return await self._read(lambda conn: _read_events(conn, channel, after, limit))

    async def history(
        self, channel: str, *, before: int | None, after: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        # One message more than asked says whether more lie beyond: past the newest of a
        # page after ``after``, before the oldest of one before ``before``.
        rows = await self._read(
            lambda conn: _read_messages(conn, channel, before=before, after=after, limit=limit + 1)
        )
        if len(rows) <= limit:
            return rows, False
        return (rows[:limit] if after is not None else rows[1:]), True

    async def get_message(self, channel: str, msg_serial: int) -> Message | None:
        sql = "SELECT body FROM messages WHERE channel = ? AND msg_serial = ?"
        rows = await self._query(sql, (channel, msg_serial), _message_row)
        return rows[0] if rows else None

    async def channel_info(self, channel: str) -> ChannelInfo | None:
        sql = "SELECT name, epoch, serial, updated_at FROM channels WHERE name = ? AND serial > 0"
        rows = await self._query(sql, (channel,), lambda r: ChannelInfo(*r))
        return rows[0] if rows else None

    async def list_channels(self, prefix: str, limit: int, after: str = "") -> list[ChannelInfo]:
        # The range bounds the index scan; substr() is the exact prefix test.
        sql = (
            "SELECT name, epoch, serial, updated_at FROM channels WHERE name >= ? AND name < ?"
            " AND name > ? AND substr(name, 1, ?) = ? AND serial > 0 ORDER BY name LIMIT ?"
        )
        args = (prefix, prefix + "\U0010ffff", after, len(prefix), prefix, limit)
        return await self._query(sql, args, lambda r: ChannelInfo(*r))

    async def get_object(self, channel: str, object_id: str) -> ObjectState | None:
        sql = "SELECT body FROM objects WHERE channel = ? AND object_id = ?"
        rows = await self._query(sql, (channel, object_id), lambda r: decode_object(r[0]))
        return rows[0] if rows else None

    async def objects(self, channel: str) -> ObjectsSnapshot:
        snap = await self._read(
            lambda conn: _read_snapshot(
                conn, channel, from_serial=None, rewind=0, replay_limit=0, objects=True
            )
        )
        assert snap.objects is not None
        return snap.objects

    async def streaming_messages(self, idle_since_ms: int, limit: int) -> list[tuple[str, Message]]:
        sql = (
            "SELECT channel, body FROM messages WHERE status = 'streaming' AND updated_at < ?"
            " ORDER BY updated_at LIMIT ?"
        )
        return await self._query(
            sql, (idle_since_ms, limit), lambda r: (r[0], decode_message(r[1]))
        )


__all__ = ["SCHEMA_VERSION", "SchemaTooNew", "SqliteStore", "StoreLocked"]
