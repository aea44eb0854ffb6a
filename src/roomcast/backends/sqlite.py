"""``sqlite:///path``: the embedded default. One process per file, durable, zero setup.

Writes go through ONE writer thread that owns its own connection: it takes everything queued,
applies it in one transaction, commits, and only then resolves the callers' futures and hands
the events to the bus. Reads run on a few reader threads, each with its own connection (WAL
lets them read while the writer writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future as ThreadFuture
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
from msgspec import UNSET

from roomcast.protocol import objects as live
from roomcast.protocol.errors import Unavailable
from roomcast.protocol.messages import Event, Message, ObjectsSnapshot, ObjectState

from .apply import check_batch, encode_event, sequence
from .base import REPLAY_PAGE, Appended, ChannelInfo, Snapshot, Store, StoreOptions
from .local import LocalBus, LocalEphemeralState, new_epoch, now_ms

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_BATCH = 1000  # work items per transaction
_BUSY_TIMEOUT_MS = 5000
_READERS = 4
_CHANNEL_CACHE = 10_000  # channel rows the writer keeps in memory

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

_INSERT_EVENTS = ("INSERT INTO events VALUES ", 4, "")
_UPSERT_MESSAGES = (
    "INSERT INTO messages VALUES ",
    6,
    """ ON CONFLICT (channel, msg_serial) DO UPDATE
    SET status = excluded.status, updated_at = excluded.updated_at, body = excluded.body""",
)
_UPSERT_KEYS = ("INSERT OR REPLACE INTO idempotency VALUES ", 4, "")
_UPSERT_CHANNELS = (
    "INSERT INTO channels VALUES ",
    6,
    """ ON CONFLICT (name) DO UPDATE SET serial = excluded.serial,
    first_serial = excluded.first_serial, updated_at = excluded.updated_at,
    objects_bytes = excluded.objects_bytes""",
)
_UPSERT_OBJECTS = ("INSERT OR REPLACE INTO objects VALUES ", 3, "")
_ROWS_PER_STATEMENT = 500


def _write_rows(
    conn: sqlite3.Connection, statement: tuple[str, int, str], rows: list[tuple[Any, ...]]
) -> None:
    """Many rows per statement: sqlite3 releases the GIL around every step, and winning it
    back from the busy event loop thread costs more than the row itself, so one step (one
    statement) per few hundred rows instead of one per row."""
    prefix, width, suffix = statement
    one = "(" + ", ".join("?" * width) + ")"
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[start : start + _ROWS_PER_STATEMENT]
        sql = prefix + ", ".join([one] * len(chunk)) + suffix
        conn.execute(sql, [value for row in chunk for value in row])


class StoreLocked(RuntimeError):
    """Another process has the SQLite file open (one process per file)."""


class SchemaTooNew(RuntimeError):
    """The file was written by a newer roomcast than this one."""


# Rows hold JSON, the protocol's data model (msgpack cannot hold an integer past 64 bits).
# Encoders and decoders are thread-safe (msgspec >= 0.16): writer and readers share them.
_encode = msgspec.json.Encoder().encode
_event = msgspec.json.Decoder(Event).decode
_message = msgspec.json.Decoder(Message).decode
_object = msgspec.json.Decoder(ObjectState).decode


def _message_row(row: tuple[bytes]) -> Message:
    return _message(row[0])


def _read_objects(conn: sqlite3.Connection, channel: str, serial: int) -> ObjectsSnapshot:
    rows = conn.execute("SELECT object_id, body FROM objects WHERE channel = ?", (channel,))
    found = {object_id: _object(body) for object_id, body in rows}
    return ObjectsSnapshot(serial=serial, objects=live.with_root(found))


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves. check_same_thread=False only so
    # aclose can close reader connections; each connection is used by one thread at a time.
    conn = sqlite3.connect(
        path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    return conn


def _take_lock(path: Path) -> int:
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


def _release_lock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
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


@dataclass(slots=True)
class _Chan:
    epoch: str
    serial: int = 0
    first_serial: int = 1
    updated_at: int = 0
    objects_bytes: int = 0

    def copy(self) -> _Chan:  # dataclasses.replace is slow, and this runs per append
        return _Chan(
            self.epoch, self.serial, self.first_serial, self.updated_at, self.objects_bytes
        )


@dataclass(slots=True, eq=False)
class _Work:
    """One queued write; ``result``/``error`` are set by the writer, read on the loop."""

    kind: Literal["append", "batch", "ensure", "purge"]
    future: asyncio.Future[Any]
    events: Sequence[Event] = ()
    keys: Sequence[str | None] = ()
    channel: str = ""
    now_ms: int = 0
    retention_ms: int = 0
    result: Any = None
    error: BaseException | None = None

    def stored(self) -> list[Event]:
        if self.error is not None or self.kind not in ("append", "batch"):
            return []
        results: list[Appended] = [self.result] if self.kind == "append" else self.result
        return [r.event for r in results if r.event is not None]


class _Stage:
    """Writes held in memory until flushed. A child stage (one work item) is merged into its
    parent only if the whole item succeeds, so a refused item leaves nothing behind."""

    def __init__(self, writer: _Writer, parent: _Stage | None = None) -> None:
        self.writer = writer
        self.parent = parent
        self.chans: dict[str, _Chan] = {}
        self.messages: dict[tuple[str, int], Message] = {}
        self.keys: dict[tuple[str, str], tuple[int, int]] = {}
        self.objects: dict[tuple[str, str], ObjectState] = {}
        self.events: list[tuple[Event, bytes]] = []

    def find_chan(self, name: str) -> _Chan | None:
        if name in self.chans:
            return self.chans[name]
        return self.parent.find_chan(name) if self.parent else self.writer.load_chan(name)

    def chan(self, name: str) -> _Chan:
        """This stage's own (mutable) copy of the channel, created with a fresh epoch."""
        chan = self.chans.get(name)
        if chan is None:
            found = self.parent.find_chan(name) if self.parent else self.writer.load_chan(name)
            chan = self.chans[name] = _Chan(new_epoch()) if found is None else found.copy()
        return chan

    def message(self, channel: str, msg_serial: int) -> Message | None:
        if (channel, msg_serial) in self.messages:
            return self.messages[(channel, msg_serial)]
        if self.parent:
            return self.parent.message(channel, msg_serial)
        return self.writer.load_message(channel, msg_serial)

    def object(self, channel: str, object_id: str) -> ObjectState | None:
        if (channel, object_id) in self.objects:
            return self.objects[(channel, object_id)]
        if self.parent:
            return self.parent.object(channel, object_id)
        return self.writer.load_object(channel, object_id)

    def key(self, channel: str, key: str) -> tuple[int, int] | None:
        if (channel, key) in self.keys:
            return self.keys[(channel, key)]
        return self.parent.key(channel, key) if self.parent else self.writer.load_key(channel, key)

    def merge(self, child: _Stage) -> None:
        self.chans.update(child.chans)
        self.messages.update(child.messages)
        self.keys.update(child.keys)
        self.objects.update(child.objects)
        self.events.extend(child.events)


class _Writer:
    """Owns the write connection; runs only on the writer thread."""

    def __init__(self, path: Path, options: StoreOptions) -> None:
        self.path = path
        self.options = options
        self.conn = _connect(path)
        self.chans: dict[str, _Chan] = {}  # committed rows, never mutated in place
        try:
            _migrate(self.conn, path)
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RuntimeError(f"{path}: could not switch to WAL mode (got {mode!r})")
            self.conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            self.conn.close()
            raise

    # ------------------------------------------------------------ reads in the transaction

    def load_chan(self, name: str) -> _Chan | None:
        chan = self.chans.get(name)
        if chan is None:
            row = self.conn.execute(
                "SELECT epoch, serial, first_serial, updated_at, objects_bytes FROM channels"
                " WHERE name = ?",
                (name,),
            ).fetchone()
            if row is not None:
                chan = _Chan(*row)
        return chan

    def load_message(self, channel: str, msg_serial: int) -> Message | None:
        row = self.conn.execute(
            "SELECT body FROM messages WHERE channel = ? AND msg_serial = ?", (channel, msg_serial)
        ).fetchone()
        return None if row is None else _message(row[0])

    def load_object(self, channel: str, object_id: str) -> ObjectState | None:
        row = self.conn.execute(
            "SELECT body FROM objects WHERE channel = ? AND object_id = ?", (channel, object_id)
        ).fetchone()
        return None if row is None else _object(row[0])

    def load_key(self, channel: str, key: str) -> tuple[int, int] | None:
        row = self.conn.execute(
            "SELECT serial, expires_at FROM idempotency WHERE channel = ? AND id = ?",
            (channel, key),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    # ------------------------------------------------------------ the loop

    def serve(
        self, work: queue.SimpleQueue[list[_Work] | None], done: Callable[[list[_Work]], None]
    ) -> None:
        try:
            stop = False
            while not stop:
                items = work.get()
                if items is None:
                    break
                batch = list(items)
                while len(batch) < _MAX_BATCH:
                    try:
                        items = work.get_nowait()
                    except queue.Empty:
                        break
                    if items is None:
                        stop = True
                        break
                    batch.extend(items)
                self.transaction(batch)
                done(batch)
        finally:
            self.conn.close()

    def transaction(self, batch: list[_Work]) -> None:
        now = now_ms()
        stage = _Stage(self)
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            for work in batch:
                self.run(stage, work, now)
            self.flush(stage)
            self.conn.execute("COMMIT")
        except Exception as exc:
            log.exception("sqlite write transaction failed; %d writes refused", len(batch))
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            self.chans.clear()  # re-read committed rows from the file, to be safe
            failure = Unavailable(f"the store could not commit: {exc}")
            for work in batch:
                work.result, work.error = None, work.error or failure
            return
        if len(self.chans) + len(stage.chans) > _CHANNEL_CACHE:
            self.chans.clear()
        self.chans.update(stage.chans)

    def run(self, stage: _Stage, work: _Work, now: int) -> None:
        if work.kind == "append":
            # One event needs no child stage: apply() changes the stage only after every
            # check and the encoding have passed, so a refused event leaves nothing behind.
            try:
                work.result = self.apply(stage, work.events[0], work.keys[0], now)
            except Exception as exc:
                work.result, work.error = None, exc
            return
        if work.kind == "purge":
            self.flush(stage)  # purge works in SQL, so it must see everything staged so far
        child = _Stage(self, stage)
        try:
            if work.kind == "batch":
                pairs = zip(work.events, work.keys, strict=True)
                work.result = [self.apply(child, e, k, now) for e, k in pairs]
            elif work.kind == "ensure":
                work.result = child.chan(work.channel).epoch
            else:
                work.result = self.purge(child, work.now_ms, work.retention_ms)
        except Exception as exc:
            work.result, work.error = None, exc
            return
        stage.merge(child)

    def apply(self, stage: _Stage, event: Event, key: str | None, now: int) -> Appended:
        """One event against the stage (the rules are in ``apply.sequence``)."""
        channel = event.channel
        chan = stage.chan(channel)
        if key is not None:
            seen = stage.key(channel, key)
            if seen is not None and seen[1] > now:
                return Appended(serial=seen[0], duplicate=True)
        serial = chan.serial + 1
        step = sequence(
            event,
            None if event.msg_serial is UNSET else stage.message(channel, event.msg_serial),
            serial=serial,
            objects=lambda object_id: stage.object(channel, object_id),
            objects_bytes=chan.objects_bytes,
            options=self.options,
            now=now,
        )
        if step is None:
            return Appended(serial=None)
        event, message, change = step.event, step.message, step.change
        body = encode_event(event)
        if change is not None:
            stage.objects[(channel, change.object_id)] = change.state
            chan.objects_bytes += change.size_delta
        elif message is not None:
            stage.messages[(channel, message.msg_serial)] = message
        chan.serial = serial
        chan.updated_at = now
        stage.events.append((event, body))
        if key is not None:
            expires = now + int(self.options.dedup_window_s * 1000)
            stage.keys[(channel, key)] = (serial, expires)
        return Appended(serial=serial, event=event)

    def flush(self, stage: _Stage) -> None:
        """Write the staged rows (still inside the transaction)."""
        conn = self.conn
        if stage.events:
            rows = [(e.channel, e.serial, e.timestamp, body) for e, body in stage.events]
            _write_rows(conn, _INSERT_EVENTS, rows)
        if stage.messages:
            _write_rows(
                conn,
                _UPSERT_MESSAGES,
                [
                    (ch, m.msg_serial, m.timestamp, m.status, m.updated_at, _encode(m))
                    for (ch, _), m in stage.messages.items()
                ],
            )
        if stage.keys:
            _write_rows(
                conn,
                _UPSERT_KEYS,
                [(ch, key, s, exp) for (ch, key), (s, exp) in stage.keys.items()],
            )
        if stage.objects:
            _write_rows(
                conn,
                _UPSERT_OBJECTS,
                [(ch, oid, _encode(state)) for (ch, oid), state in stage.objects.items()],
            )
        if stage.chans:
            chans = stage.chans.items()
            _write_rows(
                conn,
                _UPSERT_CHANNELS,
                [
                    (n, c.epoch, c.serial, c.first_serial, c.updated_at, c.objects_bytes)
                    for n, c in chans
                ],
            )
        stage.events.clear()
        stage.messages.clear()
        stage.keys.clear()
        stage.objects.clear()

    def purge(self, stage: _Stage, now: int, retention_ms: int) -> int:
        execute = self.conn.execute
        execute("SAVEPOINT purge")
        try:
            execute("DELETE FROM idempotency WHERE expires_at <= ?", (now,))
            dropped = 0
            if retention_ms > 0:
                cutoff = now - retention_ms
                names = execute("SELECT name FROM channels WHERE first_serial <= serial")
                for (name,) in names.fetchall():
                    chan = stage.find_chan(name)
                    assert chan is not None
                    # The first event young enough to keep; everything before it goes, as in
                    # MemoryStore.purge.
                    row = execute(
                        "SELECT serial FROM events WHERE channel = ? AND timestamp >= ?"
                        " ORDER BY serial LIMIT 1",
                        (name, cutoff),
                    ).fetchone()
                    first = chan.serial + 1 if row is None else int(row[0])
                    if first <= chan.first_serial:
                        continue
                    dropped += execute(
                        "DELETE FROM events WHERE channel = ? AND serial < ?", (name, first)
                    ).rowcount
                    execute(
                        "DELETE FROM messages"
                        " WHERE channel = ? AND msg_serial < ? AND timestamp < ?",
                        (name, first, cutoff),
                    )
                    stage.chan(name).first_serial = first  # a copy only where it changed
            execute("RELEASE purge")
        except BaseException:
            execute("ROLLBACK TO purge")
            execute("RELEASE purge")
            raise
        return dropped


class SqliteStore(LocalEphemeralState, Store):
    """The Store in one SQLite file (WAL mode), for one server process.

    Appends are queued to a dedicated writer thread, which group-commits everything queued
    (up to 1000 writes per transaction) and then, on the event loop, resolves each caller's
    future and hands the events to the bus in serial order. Callers' call order is the serial
    order. An ``ok`` means the transaction committed (``synchronous=NORMAL``: it survives a
    crash of the process, not necessarily a power loss). A per-channel counter in the
    ``channels`` table assigns serials in the same transaction that stores the event, so serials
    continue without a gap after a crash. Reads run on reader threads; a snapshot is one read
    transaction.

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

    def __init__(self, path: Path, bus: LocalBus, options: StoreOptions | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.bus = bus
        self.options = options or StoreOptions()
        # Writes go to the writer thread once per turn of the event loop, as one list: a
        # hand-over per write would wake the thread (and make it fight for the GIL) per write.
        self._queue: queue.SimpleQueue[list[_Work] | None] = queue.SimpleQueue()
        self._outgoing: list[_Work] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        self._lock_fd: int | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._lock_fd = await asyncio.to_thread(_take_lock, self.path)
        ready: ThreadFuture[None] = ThreadFuture()
        thread = threading.Thread(
            target=self._writer_main, args=(ready,), name="roomcast-sqlite-writer", daemon=True
        )
        thread.start()
        try:
            await asyncio.wrap_future(ready)
        except BaseException:
            await asyncio.to_thread(thread.join)
            _release_lock(self._lock_fd)
            self._lock_fd = None
            raise
        self._thread = thread
        self._readers = ThreadPoolExecutor(_READERS, thread_name_prefix="roomcast-sqlite-read")
        self._accepting = True

    def _writer_main(self, ready: ThreadFuture[None]) -> None:
        try:
            writer = _Writer(self.path, self.options)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        writer.serve(self._queue, self._deliver)

    async def aclose(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._accepting = False
        self._hand_over()
        self._queue.put(None)  # after everything accepted so far: the writer drains first
        await asyncio.to_thread(thread.join)
        self._thread = None
        await asyncio.sleep(0)  # let the last completions run
        if self._readers is not None:
            await asyncio.to_thread(self._readers.shutdown, True)
            self._readers = None
        with self._conns_lock:
            conns, self._read_conns = self._read_conns, []
        for conn in conns:
            conn.close()
        if self._lock_fd is not None:
            _release_lock(self._lock_fd)
            self._lock_fd = None

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())

    # ------------------------------------------------------------ writes

    def _submit(self, work: _Work) -> asyncio.Future[Any]:
        if not self._accepting:
            raise Unavailable(f"the store {self.path} is closed")
        self._outgoing.append(work)
        if len(self._outgoing) == 1:
            asyncio.get_running_loop().call_soon(self._hand_over)
        return work.future

    def _hand_over(self) -> None:
        if self._outgoing:
            self._queue.put(self._outgoing)
            self._outgoing = []

    def _deliver(self, batch: list[_Work]) -> None:
        """On the writer thread, after the commit: one hop to the loop per transaction."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                loop.call_soon_threadsafe(self._complete, batch)

    def _complete(self, batch: list[_Work]) -> None:
        by_channel: dict[str, list[Event]] = {}
        for work in batch:
            if not work.future.done():
                if work.error is not None:
                    work.future.set_exception(work.error)
                else:
                    work.future.set_result(work.result)
            for event in work.stored():
                by_channel.setdefault(event.channel, []).append(event)
        for channel, events in by_channel.items():
            try:
                self.bus.emit(channel, events)
            except Exception:
                log.exception("bus sink failed for %s", channel)

    def _future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def append(self, event: Event, *, idempotency_key: str | None = None) -> Appended:
        # Enqueued before the first await: callers' call order is the serial order.
        result: Appended = await self.submit(event, idempotency_key=idempotency_key)
        return result

    def submit(
        self, event: Event, *, idempotency_key: str | None = None
    ) -> asyncio.Future[Appended]:
        work = _Work("append", self._future(), events=(event,), keys=(idempotency_key,))
        return self._submit(work)

    async def append_batch(
        self, events: Sequence[Event], keys: Sequence[str | None]
    ) -> list[Appended]:
        check_batch(events, keys)
        if not events:
            return []
        work = _Work("batch", self._future(), events=list(events), keys=list(keys))
        results: list[Appended] = await self._submit(work)
        return results

    async def purge(self, now_ms: int, retention_ms: int) -> int:
        work = _Work("purge", self._future(), now_ms=now_ms, retention_ms=retention_ms)
        dropped: int = await self._submit(work)
        return dropped

    # ------------------------------------------------------------ reads

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self.path)
            conn.execute("PRAGMA query_only = ON")
            with self._conns_lock:
                self._read_conns.append(conn)
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        readers = self._readers
        if readers is None:
            raise Unavailable(f"the store {self.path} is closed")
        return await asyncio.get_running_loop().run_in_executor(readers, lambda: fn(self._reader()))

    async def snapshot(
        self,
        channel: str,
        *,
        from_serial: int | None,
        rewind: int,
        replay_limit: int = REPLAY_PAGE,
        objects: bool = False,
    ) -> Snapshot:
        def read(conn: sqlite3.Connection) -> Snapshot | None:
            conn.execute("BEGIN")  # one read transaction: everything as of the same serial
            try:
                row = conn.execute(
                    "SELECT epoch, serial, first_serial FROM channels WHERE name = ?", (channel,)
                ).fetchone()
                if row is None:
                    return None
                epoch, serial, first = row
                messages: list[Message] = []
                if rewind > 0:
                    rows = conn.execute(
                        "SELECT body FROM messages WHERE channel = ?"
                        " ORDER BY msg_serial DESC LIMIT ?",
                        (channel, rewind),
                    ).fetchall()
                    messages = [_message(body) for (body,) in reversed(rows)]
                events = None
                if from_serial is not None and first - 1 <= from_serial <= serial:
                    rows = conn.execute(
                        "SELECT body FROM events WHERE channel = ? AND serial > ?"
                        " ORDER BY serial LIMIT ?",
                        (channel, from_serial, replay_limit),
                    ).fetchall()
                    events = [_event(body) for (body,) in rows]
                snap_objects = _read_objects(conn, channel, serial) if objects else None
                return Snapshot(epoch, serial, first, messages, events, snap_objects)
            finally:
                conn.execute("COMMIT")

        snap = await self._read(read)
        if snap is None:
            # No row yet: the writer creates it, fixing the epoch for every later read.
            await self._submit(_Work("ensure", self._future(), channel=channel))
            snap = await self._read(read)
        assert snap is not None
        return snap

    async def _query(self, sql: str, args: tuple[Any, ...], row: Callable[[Any], T]) -> list[T]:
        return await self._read(lambda conn: [row(r) for r in conn.execute(sql, args)])

    async def read_events(self, channel: str, after: int, limit: int) -> list[Event]:
        sql = "SELECT body FROM events WHERE channel = ? AND serial > ? ORDER BY serial LIMIT ?"
        return await self._query(sql, (channel, after, limit), lambda r: _event(r[0]))

    async def history(
        self, channel: str, *, before: int | None, after: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        # One row more than asked says whether more lie beyond.
        if after is not None:
            sql = "SELECT body FROM messages WHERE channel = ? AND msg_serial > ?"
            rows = await self._query(
                sql + " ORDER BY msg_serial LIMIT ?", (channel, after, limit + 1), _message_row
            )
            return rows[:limit], len(rows) > limit
        sql = "SELECT body FROM messages WHERE channel = ? AND msg_serial < ?"
        bound = 2**63 - 1 if before is None else before
        rows = await self._query(
            sql + " ORDER BY msg_serial DESC LIMIT ?", (channel, bound, limit + 1), _message_row
        )
        return rows[:limit][::-1], len(rows) > limit

    async def get_message(self, channel: str, msg_serial: int) -> Message | None:
        sql = "SELECT body FROM messages WHERE channel = ? AND msg_serial = ?"
        rows = await self._query(sql, (channel, msg_serial), _message_row)
        return rows[0] if rows else None

    async def channel_info(self, channel: str) -> ChannelInfo | None:
        sql = "SELECT name, epoch, serial, updated_at FROM channels WHERE name = ? AND serial > 0"
        rows = await self._query(sql, (channel,), lambda r: ChannelInfo(*r))
        return rows[0] if rows else None

    async def list_channels(self, prefix: str, limit: int) -> list[ChannelInfo]:
        # The range bounds the index scan; substr() is the exact prefix test.
        sql = (
            "SELECT name, epoch, serial, updated_at FROM channels WHERE name >= ? AND name < ?"
            " AND substr(name, 1, ?) = ? AND serial > 0 ORDER BY name LIMIT ?"
        )
        args = (prefix, prefix + "\U0010ffff", len(prefix), prefix, limit)
        return await self._query(sql, args, lambda r: ChannelInfo(*r))

    async def get_object(self, channel: str, object_id: str) -> ObjectState | None:
        sql = "SELECT body FROM objects WHERE channel = ? AND object_id = ?"
        rows = await self._query(sql, (channel, object_id), lambda r: _object(r[0]))
        return rows[0] if rows else None

    async def objects(self, channel: str) -> ObjectsSnapshot:
        def read(conn: sqlite3.Connection) -> ObjectsSnapshot:
            conn.execute("BEGIN")
            try:
                row = conn.execute("SELECT serial FROM channels WHERE name = ?", (channel,))
                found = row.fetchone()
                return _read_objects(conn, channel, 0 if found is None else int(found[0]))
            finally:
                conn.execute("COMMIT")

        return await self._read(read)

    async def streaming_messages(self, idle_since_ms: int, limit: int) -> list[tuple[str, Message]]:
        sql = (
            "SELECT channel, body FROM messages WHERE status = 'streaming' AND updated_at < ?"
            " ORDER BY updated_at LIMIT ?"
        )
        return await self._query(sql, (idle_since_ms, limit), lambda r: (r[0], _message(r[1])))


__all__ = ["SCHEMA_VERSION", "SchemaTooNew", "SqliteStore", "StoreLocked"]
