"""The SQLite store's one writer thread: its queue, the batching of queued writes into one
transaction, and the hand-back of their results to the event loop.

The thread owns its own connection. It takes everything queued (up to 1000 writes), applies
it in one transaction (each event through ``apply.apply_to_stage``, staged in memory and written
in one statement, below), commits, and only then hands the batch back to the loop,
which resolves the callers' futures and hands the events to the bus, in serial order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future as ThreadFuture
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from roomcast.protocol.errors import Unavailable
from roomcast.protocol.messages import Event, Message, ObjectState

from .apply import ChannelHead, apply_to_stage, encode_event
from .base import Appended, AppendReport, StoreOptions
from .local import channel_epoch, now_ms
from .sqlite_file import (
    EPOCH_SEED_SQL,
    connect,
    decode_message,
    decode_object,
    encode_value,
    migrate,
)
from .sqlite_rows import (
    CHANNEL,
    EVENT,
    KEY,
    MESSAGE,
    OBJECT,
    create_writes_view,
    fits_one_statement,
    write_rows,
)

# The store's logger: logs name it, and operators filter on it.
log = logging.getLogger("roomcast.backends.sqlite")

_MAX_BATCH = 1000  # work items per transaction
_CHANNEL_CACHE = 10_000  # channel rows the writer keeps in memory
_STREAM_CACHE = 10_000  # streaming messages the writer keeps in memory


def _indexed(message: Message) -> str:
    """The ``status`` column: the sweeper's index of streaming messages, which a deleted
    message leaves (it takes no more changes, so nobody can end it)."""
    return "deleted" if message.deleted else message.status


def _copy(chan: ChannelHead) -> ChannelHead:
    """A copy a stage may change (dataclasses.replace is slow, and this runs per append)."""
    return ChannelHead(
        chan.epoch, chan.serial, chan.first_serial, chan.updated_at, chan.objects_bytes
    )


@dataclass(slots=True, eq=False)
class Work:
    """One queued write; ``result``/``error`` are set by the writer, read on the loop."""

    kind: Literal["append", "batch", "purge"]
    future: asyncio.Future[Any]
    events: Sequence[Event] = ()
    keys: Sequence[str | None] = ()
    channel: str = ""
    now_ms: int = 0
    retention_ms: int = 0
    result: Any = None
    error: BaseException | None = None
    started: float = 0.0  # perf_counter() at submit, for a report

    def stored(self) -> list[Event]:
        if self.error is not None or self.kind not in ("append", "batch"):
            return []
        results: list[Appended] = [self.result] if self.kind == "append" else self.result
        return [r.event for r in results if r.event is not None]


class _Stage:
    """Writes held in memory until flushed. A child stage (one work item) is merged into its
    parent only if the whole item succeeds, so a refused item leaves nothing behind."""

    def __init__(self, writer: _WriteConnection, parent: _Stage | None = None) -> None:
        self.writer = writer
        self.parent = parent
        self.chans: dict[str, ChannelHead] = {}
        self.messages: dict[tuple[str, int], Message] = {}
        self.keys: dict[tuple[str, str], tuple[int, int]] = {}
        self.objects: dict[tuple[str, str], ObjectState] = {}
        self.events: list[tuple[Event, bytes]] = []
        self.views: dict[str, _ChannelStage] = {}  # one per channel: many events share it

    def view(self, channel: str) -> _ChannelStage:
        """The channel as ``apply_to_stage`` sees it in this stage."""
        found = self.views.get(channel)
        if found is None:
            found = self.views[channel] = _ChannelStage(self, channel)
        return found

    def find_chan(self, name: str) -> ChannelHead | None:
        if name in self.chans:
            return self.chans[name]
        return self.parent.find_chan(name) if self.parent else self.writer.load_chan(name)

    def chan(self, name: str) -> ChannelHead:
        """This stage's own (mutable) copy of the channel; a channel with no row yet gets
        the epoch reads reported for it (its row is written once it has an event)."""
        chan = self.chans.get(name)
        if chan is None:
            found = self.parent.find_chan(name) if self.parent else self.writer.load_chan(name)
            if found is None:
                found = ChannelHead(channel_epoch(self.writer.epoch_seed, name))
            chan = self.chans[name] = _copy(found)
        return chan

    def message(self, channel: str, msg_serial: int) -> Message | None:
        if (channel, msg_serial) in self.messages:
            return self.messages[(channel, msg_serial)]
        below = self.parent.message if self.parent else self.writer.load_message
        return below(channel, msg_serial)

    def object(self, channel: str, object_id: str) -> ObjectState | None:
        if (channel, object_id) in self.objects:
            return self.objects[(channel, object_id)]
        below = self.parent.object if self.parent else self.writer.load_object
        return below(channel, object_id)

    def key(self, channel: str, key: str) -> tuple[int, int] | None:
        if (channel, key) in self.keys:
            return self.keys[(channel, key)]
        return self.parent.key(channel, key) if self.parent else self.writer.load_key(channel, key)

    def close(self) -> None:
        """Drop the views, which refer back to this stage: its copies are then freed once
        unused, not at the garbage collector's next pass (per write, they were most of a
        busy server's cyclic garbage)."""
        self.views.clear()

    def merge(self, child: _Stage) -> None:
        for name in child.chans:  # the child's heads replace ours: so must the views
            self.views.pop(name, None)
        self.chans.update(child.chans)
        self.messages.update(child.messages)
        self.keys.update(child.keys)
        self.objects.update(child.objects)
        self.events.extend(child.events)


class _ChannelStage:
    """One channel of a stage, as ``apply_to_stage`` reads and stages it."""

    __slots__ = ("channel", "head", "stage")

    def __init__(self, stage: _Stage, channel: str) -> None:
        self.stage = stage
        self.channel = channel
        self.head = stage.chan(channel)

    def key_serial(self, key: str, now: int) -> int | None:
        seen = self.stage.key(self.channel, key)
        return seen[0] if seen is not None and seen[1] > now else None

    def message(self, msg_serial: int) -> Message | None:
        return self.stage.message(self.channel, msg_serial)

    def live_object(self, object_id: str) -> ObjectState | None:
        return self.stage.object(self.channel, object_id)

    def encode(self, event: Event) -> bytes:
        return encode_event(event)

    def put_event(self, event: Event, body: bytes) -> None:
        self.stage.events.append((event, body))
        self.head.updated_at = event.timestamp

    def put_message(self, message: Message, *, created: bool) -> None:
        self.stage.messages[(self.channel, message.msg_serial)] = message

    def put_object(self, object_id: str, state: ObjectState) -> None:
        self.stage.objects[(self.channel, object_id)] = state

    def put_key(self, key: str, serial: int, expires_at: int) -> None:
        self.stage.keys[(self.channel, key)] = (serial, expires_at)


class _WriteConnection:
    """Owns the write connection; runs only on the writer thread."""

    def __init__(self, path: Path, options: StoreOptions) -> None:
        self.path = path
        self.options = options
        self.conn = connect(path)
        self.chans: dict[str, ChannelHead] = {}  # committed rows, never mutated in place
        # Committed messages still streaming: each transaction appends to them again, and
        # reading and decoding them back from the file each time cost more than the append.
        self.streams: dict[tuple[str, int], Message] = {}
        self._written: dict[tuple[str, int], Message] = {}  # this transaction's, so far
        try:
            migrate(self.conn, path)
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RuntimeError(f"{path}: could not switch to WAL mode (got {mode!r})")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.epoch_seed: str = self.conn.execute(EPOCH_SEED_SQL).fetchone()[0]
            create_writes_view(self.conn)
        except BaseException:
            self.conn.close()
            raise

    # ------------------------------------------------------------ reads in the transaction

    def load_chan(self, name: str) -> ChannelHead | None:
        chan = self.chans.get(name)
        if chan is None:
            row = self.conn.execute(
                "SELECT epoch, serial, first_serial, updated_at, objects_bytes FROM channels"
                " WHERE name = ?",
                (name,),
            ).fetchone()
            if row is not None:
                chan = ChannelHead(*row)
        return chan

    def load_message(self, channel: str, msg_serial: int) -> Message | None:
        cached = self.streams.get((channel, msg_serial))
        if cached is not None:
            return cached
        row = self.conn.execute(
            "SELECT body FROM messages WHERE channel = ? AND msg_serial = ?", (channel, msg_serial)
        ).fetchone()
        return None if row is None else decode_message(row[0])

    def load_object(self, channel: str, object_id: str) -> ObjectState | None:
        row = self.conn.execute(
            "SELECT body FROM objects WHERE channel = ? AND object_id = ?", (channel, object_id)
        ).fetchone()
        return None if row is None else decode_object(row[0])

    def load_key(self, channel: str, key: str) -> tuple[int, int] | None:
        row = self.conn.execute(
            "SELECT serial, expires_at FROM idempotency WHERE channel = ? AND id = ?",
            (channel, key),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    # ------------------------------------------------------------ the loop

    def serve(
        self, work: queue.SimpleQueue[list[Work] | None], done: Callable[[list[Work]], None]
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

    def transaction(self, batch: list[Work]) -> None:
        """Apply ``batch`` and write it, all or nothing: one statement where its rows fit
        in one, else (or with a purge, which works in SQL) one explicit transaction.

        The reads before the write need no transaction: this thread is the file's only
        writer (the lock file keeps other processes out, and the readiness probe writes
        only its own table).
        """
        now = now_ms()
        stage = _Stage(self)
        try:
            self._write(stage, batch, now)
        finally:
            stage.close()

    def _write(self, stage: _Stage, batch: list[Work], now: int) -> None:
        explicit = False
        try:
            if any(work.kind == "purge" for work in batch):
                self.conn.execute("BEGIN IMMEDIATE")
                explicit = True
            for work in batch:
                self.run(stage, work, now)
            rows = self.rows(stage)
            if not explicit and not fits_one_statement(rows):
                self.conn.execute("BEGIN IMMEDIATE")
                explicit = True
            write_rows(self.conn, rows)
            if explicit:
                self.conn.execute("COMMIT")
        except Exception as exc:
            log.exception("sqlite write transaction failed; %d writes refused", len(batch))
            if explicit:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            self.chans.clear()  # re-read committed rows from the file, to be safe
            self.streams.clear()
            self._written.clear()
            failure = Unavailable(f"the store could not commit: {exc}")
            for work in batch:
                work.result, work.error = None, work.error or failure
            return
        if len(self.chans) + len(stage.chans) > _CHANNEL_CACHE:
            self.chans.clear()
        self.chans.update(stage.chans)
        self._keep_streams()

    def _keep_streams(self) -> None:
        """Remember the committed messages that still stream; forget those that ended."""
        written, self._written = self._written, {}
        if len(self.streams) + len(written) > _STREAM_CACHE:
            self.streams.clear()
        for key, message in written.items():
            if message.status == "streaming" and not message.deleted:
                self.streams[key] = message
            else:
                self.streams.pop(key, None)

    def run(self, stage: _Stage, work: Work, now: int) -> None:
        if work.kind == "append":
            # One event needs no child stage: apply_to_stage() changes the stage only after every
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
            else:
                work.result = self.purge(child, work.now_ms, work.retention_ms)
        except Exception as exc:
            work.result, work.error = None, exc
            return
        else:
            stage.merge(child)
        finally:
            child.close()

    def apply(self, stage: _Stage, event: Event, key: str | None, now: int) -> Appended:
        return apply_to_stage(stage.view(event.channel), event, key, options=self.options, now=now)

    def flush(self, stage: _Stage) -> None:
        """Write the staged rows (inside the purge's explicit transaction)."""
        write_rows(self.conn, self.rows(stage))

    def rows(self, stage: _Stage) -> list[tuple[Any, ...]]:
        """The staged rows, as the ``writes`` view takes them; the stage is emptied."""
        rows: list[tuple[Any, ...]] = [
            (EVENT, e.channel, e.serial, e.timestamp, body, None, None) for e, body in stage.events
        ]
        if stage.messages:
            self._written.update(stage.messages)
            rows += [
                (
                    MESSAGE,
                    ch,
                    m.msg_serial,
                    m.timestamp,
                    _indexed(m),
                    m.updated_at,
                    encode_value(m),
                )
                for (ch, _), m in stage.messages.items()
            ]
        rows += [(KEY, ch, key, s, exp, None, None) for (ch, key), (s, exp) in stage.keys.items()]
        rows += [
            (OBJECT, ch, oid, encode_value(state), None, None, None)
            for (ch, oid), state in stage.objects.items()
        ]
        # A channel without events has no row (a refused first event leaves none).
        rows += [
            (CHANNEL, n, c.epoch, c.serial, c.first_serial, c.updated_at, c.objects_bytes)
            for n, c in stage.chans.items()
            if c.serial > 0
        ]
        stage.events.clear()
        stage.messages.clear()
        stage.keys.clear()
        stage.objects.clear()
        return rows

    def purge(self, stage: _Stage, now: int, retention_ms: int) -> int:
        execute = self.conn.execute
        self.streams.clear()  # it deletes messages in SQL
        self._written.clear()
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


class SqliteWriter:
    """The writer thread, as the event loop sees it: a queue in, results back on the loop.

    Writes go to the thread once per turn of the event loop, as one list: a hand-over per
    write would wake the thread (and make it fight for the GIL) per write. After each
    commit, one hop back to the loop resolves the batch's futures and passes its stored
    events, by channel in serial order, to ``emit`` (the bus).

    Args:
        path: The database file.
        options: What the writes apply with (dedup window, size limits).
        emit: Called on the loop with each channel's newly stored events.
    """

    def __init__(
        self, path: Path, options: StoreOptions, emit: Callable[[str, list[Event]], None]
    ) -> None:
        self.path = path
        self.options = options
        self._emit = emit
        self._queue: queue.SimpleQueue[list[Work] | None] = queue.SimpleQueue()
        self._outgoing: list[Work] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.accepting = False
        self.report: AppendReport | None = None

    @property
    def running(self) -> bool:
        """Whether the thread was started and not yet stopped."""
        return self._thread is not None

    async def start(self) -> None:
        """Open the write connection (migrating the file) on a new writer thread.

        Raises:
            SchemaTooNew: A newer roomcast wrote the file (the thread has ended).
        """
        self._loop = asyncio.get_running_loop()
        ready: ThreadFuture[None] = ThreadFuture()
        thread = threading.Thread(
            target=self._main, args=(ready,), name="roomcast-sqlite-writer", daemon=True
        )
        thread.start()
        try:
            await asyncio.wrap_future(ready)
        except BaseException:
            await asyncio.to_thread(thread.join)
            raise
        self._thread = thread
        self.accepting = True

    def _main(self, ready: ThreadFuture[None]) -> None:
        try:
            writer = _WriteConnection(self.path, self.options)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        writer.serve(self._queue, self._deliver)

    async def stop(self) -> None:
        """Refuse new writes, and return once everything accepted so far is committed and
        its results are handed back."""
        thread = self._thread
        if thread is None:
            return
        self.accepting = False
        self._hand_over()
        self._queue.put(None)  # after everything accepted so far: the writer drains first
        await asyncio.to_thread(thread.join)
        self._thread = None
        await asyncio.sleep(0)  # let the last completions run

    def submit_events(
        self, events: Sequence[Event], keys: Sequence[str | None], *, batch: bool
    ) -> asyncio.Future[Any]:
        """See :meth:`.apply.EventQueue.submit_events`."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        work = Work("batch" if batch else "append", future, events, keys)
        if self.report is not None:
            work.started = time.perf_counter()
        return self.submit(work)

    def submit(self, work: Work) -> asyncio.Future[Any]:
        """Queue ``work``; its future resolves once its transaction committed (or failed).

        Raises:
            Unavailable: The writer is not accepting writes (not open, or closing).
        """
        if not self.accepting:
            raise Unavailable(f"the store {self.path} is closed")
        self._outgoing.append(work)
        if len(self._outgoing) == 1:
            asyncio.get_running_loop().call_soon(self._hand_over)
        return work.future

    def _hand_over(self) -> None:
        if self._outgoing:
            self._queue.put(self._outgoing)
            self._outgoing = []

    def _deliver(self, batch: list[Work]) -> None:
        """On the writer thread, after the commit: one hop to the loop per transaction."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                loop.call_soon_threadsafe(self._complete, batch)

    def _complete(self, batch: list[Work]) -> None:
        """On the loop: answer the batch's writes, then hand their events to the bus."""
        by_channel: dict[str, list[Event]] = {}
        report = self.report
        now = time.perf_counter()
        for work in batch:
            stored = work.stored()
            if not work.future.done():
                if work.error is not None:
                    work.future.set_exception(work.error)
                else:
                    work.future.set_result(work.result)
            if report is not None and work.kind != "purge":
                op = "append" if work.kind == "append" else "append_batch"
                report(op, now - work.started, len(stored))
            if len(stored) == 1:
                event = stored[0]
                events = by_channel.get(event.channel)
                if events is None:
                    by_channel[event.channel] = [event]
                else:
                    events.append(event)
            elif stored:
                by_channel.setdefault(stored[0].channel, []).extend(stored)
        for channel, events in by_channel.items():
            try:
                self._emit(channel, events)
            except Exception:
                log.exception("bus sink failed for %s", channel)


__all__ = ["SqliteWriter", "Work"]
