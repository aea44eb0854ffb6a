"""What only the SQLite store promises: durability, one process per file, schema versions."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest

import roomcast
from roomcast.backends.base import StoreOptions
from roomcast.backends.local import LocalBus, now_ms
from roomcast.backends.sqlite import (
    SCHEMA_VERSION,
    SchemaTooNew,
    SqliteStore,
    StoreLocked,
    _read_events,
    _read_messages,
    _read_snapshot,
)
from roomcast.backends.sqlite_file import StoreDamaged, StoreUnwritable
from roomcast.protocol.errors import TooLarge, Unavailable
from roomcast.protocol.messages import Event, ObjectsSnapshot

CH = "room:durable"
SRC = str(Path(roomcast.__file__).resolve().parents[1])  # for the child process


def create(data: Any = "hi", *, streaming: bool = False) -> Event:
    return Event(
        channel=CH,
        serial=0,
        type="create",
        client_id="alice",
        timestamp=0,
        data=data,
        streaming=streaming,
    )


def store_at(path: Path, options: StoreOptions | None = None) -> SqliteStore:
    return SqliteStore(path, LocalBus(), options)


async def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "room.db"  # the directory is created
    async with store_at(path) as store:
        for i in range(5):
            await store.append(create(i), idempotency_key=f"k{i}")
        stream = await store.append(create("Hel", streaming=True))
        assert stream.serial == 6
        await store.append(
            Event(
                channel=CH,
                serial=0,
                type="append",
                msg_serial=6,
                client_id="alice",
                timestamp=0,
                data="lo",
            )
        )
        before = await store.snapshot(CH, from_serial=0, rewind=100)
        empty = await store.snapshot("room:empty", from_serial=None, rewind=0)

    async with store_at(path) as store:
        after = await store.snapshot(CH, from_serial=0, rewind=100)
        assert after == before
        assert after.serial == 7 and after.messages[-1].data == "Hello"
        assert (await store.snapshot("room:empty", from_serial=None, rewind=0)).epoch == empty.epoch
        assert (await store.append(create("next"))).serial == 8
        repeated = await store.append(create("again"), idempotency_key="k2")
        assert repeated.serial == 3 and repeated.duplicate
        found = await store.streaming_messages(10**15, 10)
        assert [(ch, m.msg_serial, m.data) for ch, m in found] == [(CH, 6, "Hello")]
        info = await store.channel_info(CH)
        assert info is not None and info.epoch == before.epoch and info.serial == 8


def object_op(op: dict[str, Any]) -> Event:
    return Event(channel=CH, serial=0, type="object", client_id="alice", timestamp=0, op=op)


async def test_live_objects_and_their_size_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "objects.db"
    options = StoreOptions(max_objects_bytes=300)
    async with store_at(path, options) as store:
        await store.append(object_op({"type": "counter.create", "value": 1}))
        await store.append(object_op({"type": "counter.inc", "object_id": "counter-1"}))
        set_root = {"type": "map.set", "object_id": "root", "key": "a", "value": "x" * 150}
        await store.append(object_op(set_root))
        before = await store.objects(CH)
    async with store_at(path, options) as store:
        assert await store.objects(CH) == before
        assert before.objects["counter-1"].value == 2
        # The channel's object bytes were stored too: the cap still counts the old state.
        with pytest.raises(TooLarge):
            too_much = {"type": "map.set", "object_id": "root", "key": "b", "value": "y" * 150}
            await store.append(object_op(too_much))


async def test_a_version_1_file_is_migrated(tmp_path: Path) -> None:
    from roomcast.backends import sqlite_file as module

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for statement in module._MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("INSERT INTO channels VALUES ('room:old', 'e-old', 0, 1, 0)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    async with store_at(path) as store:
        assert (await store.append(create("still here"))).serial == 1
        await store.append(object_op({"type": "counter.create", "value": 5}))
        assert (await store.objects(CH)).objects["counter-2"].value == 5
        info = await store.snapshot("room:old", from_serial=None, rewind=0)
        assert info.epoch == "e-old"


async def test_second_open_of_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    first = store_at(path)
    await first.open()
    try:
        with pytest.raises(
            StoreLocked, match=rf"in use by another roomcast process \(pid {os.getpid()}\)"
        ):
            await store_at(path).open()
        assert (await first.append(create())).serial == 1  # the first one still works
    finally:
        await first.aclose()
    async with store_at(path) as second:  # released on aclose
        assert (await second.append(create())).serial == 2


async def test_schema_versions(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    async with store_at(path) as store:
        await store.append(create())
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()

    with pytest.raises(SchemaTooNew, match=f"schema version {SCHEMA_VERSION + 1}.*newer roomcast"):
        await store_at(path).open()

    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.close()
    async with store_at(path) as store:  # the refused open released the lock
        assert (await store.append(create())).serial == 2


async def test_aclose_flushes_accepted_appends(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    store = store_at(path)
    await store.open()
    tasks = [asyncio.create_task(store.append(create(i))) for i in range(500)]
    await asyncio.sleep(0)  # each task has queued its append, none has its answer yet
    assert not any(task.done() for task in tasks)
    await store.aclose()
    assert [task.result().serial for task in tasks] == list(range(1, 501))
    with pytest.raises(Unavailable):
        await store.append(create())

    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*), max(serial) FROM events").fetchone() == (500, 500)
    conn.close()


async def test_failed_item_does_not_roll_back_its_group(tmp_path: Path) -> None:
    async with store_at(tmp_path / "x.db") as store:
        bad = Event(channel=CH, serial=0, type="delete", msg_serial=99, client_id="a", timestamp=0)
        results = await asyncio.gather(
            store.append(create(1)),
            store.append(bad),
            store.append(create(2)),
            return_exceptions=True,
        )
        assert [getattr(r, "serial", type(r).__name__) for r in results] == [1, "NotFound", 2]
        # Data JSON cannot hold (a msgpack extension type) is refused alone, too.
        unstorable = create(msgspec.msgpack.Ext(1, b"x"))
        results = await asyncio.gather(
            store.append(create(3)),
            store.append(unstorable),
            store.append(create(4)),
            return_exceptions=True,
        )
        assert [getattr(r, "serial", type(r).__name__) for r in results] == [3, "BadRequest", 4]
    async with store_at(tmp_path / "x.db") as store:
        assert [e.data for e in await store.read_events(CH, 0, 10)] == [1, 2, 3, 4]


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from roomcast.backends import open_backend
    from roomcast.protocol.messages import Event

    async def main() -> None:
        store = open_backend(sys.argv[1])
        await store.open()
        print("ready", flush=True)

        async def writer(w: int) -> None:
            i = 0
            while True:
                event = Event(channel="room:durable", serial=0, type="create",
                              client_id="w", timestamp=0, data=f"{w}:{i}")
                result = await store.append(event)
                sys.stdout.write(f"{result.serial}\\n")
                sys.stdout.flush()
                i += 1

        await asyncio.gather(*(writer(w) for w in range(64)))

    asyncio.run(main())
    """
)


async def test_sigkill_loses_no_acknowledged_append(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(script), f"sqlite:///{path}", stdout=asyncio.subprocess.PIPE, env=env
    )
    assert child.stdout is not None
    assert await asyncio.wait_for(child.stdout.readline(), 30) == b"ready\n"
    await asyncio.sleep(1.0)
    child.send_signal(signal.SIGKILL)
    output = await child.stdout.read()
    assert await child.wait() == -signal.SIGKILL

    lines = output.split(b"\n")[:-1]  # a line cut by the kill has no newline
    acked = [int(line) for line in lines]
    assert len(acked) > 100, "the child should have appended for a second"
    assert len(set(acked)) == len(acked)

    async with store_at(path) as store:
        snap = await store.snapshot(CH, from_serial=0, rewind=0)
        stored = [e.serial for e in await store.read_events(CH, 0, 10**7)]
        assert stored == list(range(1, snap.serial + 1))  # gap-free
        assert max(acked) <= snap.serial  # every acknowledged append is there
        assert (await store.append(create("after the crash"))).serial == snap.serial + 1


async def test_retention_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    async with store_at(path) as store:
        for i in range(4):
            await store.append(create(i))
        await asyncio.sleep(0.01)
        now = now_ms()
        assert await store.purge(now, 5) == 4
    async with store_at(path) as store:
        snap = await store.snapshot(CH, from_serial=0, rewind=10)
        assert (snap.serial, snap.first_serial, snap.events, snap.messages) == (4, 5, None, [])
        assert (await store.append(create("new"))).serial == 5
        assert [e.serial for e in await store.read_events(CH, 0, 10)] == [5]


# ---------------------------------------------------------------- damaged and unwritable files


def damage(path: Path, pages: range = range(3, 9)) -> None:
    """Write garbage over ``pages`` of the file (page 1, the header, stays intact)."""
    size = sqlite3.connect(path).execute("PRAGMA page_size").fetchone()[0]
    assert path.stat().st_size > size * pages.stop, "the file should have those pages"
    with path.open("r+b") as file:
        for page in pages:
            file.seek((page - 1) * size)
            file.write(os.urandom(size))


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """``chattr +i`` on ``paths`` while inside: no process, root included, writes them."""
    try:
        for path in paths:
            subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        for path in paths:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        pytest.skip(f"chattr +i is not available here: {exc}")
    try:
        yield
    finally:
        for path in paths:
            subprocess.run(["chattr", "-i", str(path)], check=True, capture_output=True)


async def test_a_damaged_file_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    async with store_at(path) as store:
        await store.append_batch([create("x" * 2000) for _ in range(200)], [None] * 200)
    damage(path)
    with pytest.raises(StoreDamaged, match=rf"{path} is damaged \(integrity check: .+\)"):
        await store_at(path).open()
    async with store_at(tmp_path / "y.db") as store:  # the refused open released its lock
        await store.append(create())


async def test_a_file_that_is_not_a_database_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    path.write_bytes(b"not a database, " * 1000)
    with pytest.raises(StoreDamaged, match=rf"{path} is damaged .*not a database"):
        await store_at(path).open()


async def test_a_file_that_takes_no_writes_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    async with store_at(path) as store:
        await store.append(create())
    with immutable(path), pytest.raises(StoreUnwritable, match=rf"{path} takes no writes"):
        await store_at(path).open()


async def test_ping_fails_while_another_program_holds_the_file_locked(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    async with store_at(path) as store:
        await store.ping()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("PRAGMA busy_timeout = 0")
        other.execute("BEGIN EXCLUSIVE")  # readers still read (WAL); no write gets in
        try:
            with pytest.raises(Unavailable, match=r"takes no writes.*locked"):
                await store.ping()
        finally:
            other.execute("ROLLBACK")
            other.close()
        await store.ping()
        assert (await store.append(create())).serial == 1


async def test_ping_fails_while_the_journal_takes_no_writes(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    async with store_at(path) as store:
        await store.append(create())
        await store.ping()
        with immutable(path.with_name(path.name + "-wal")):
            with pytest.raises(Unavailable, match="takes no writes"):
                await store.ping()
            with pytest.raises(Unavailable):
                await store.append(create())
        await store.ping()
        assert (await store.append(create())).serial == 2


class RowsCounted:
    """A connection whose cursors write down each row they give Python."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.rows = 0

    def execute(self, sql: str, *args: Any) -> RowsCounted:
        self.cursor = self.conn.execute(sql, *args)
        return self

    def fetchone(self) -> Any:
        row = self.cursor.fetchone()
        self.rows += row is not None
        return row


async def test_a_page_of_history_or_events_is_read_as_one_row(tmp_path: Path) -> None:
    # sqlite3 gives up the interpreter lock for each row it steps to: a page is one row.
    path = tmp_path / "x.db"
    async with store_at(path) as store:
        for i in range(250):
            await store.append(create(f'message {i}, "quoted" and ünïcode\n'))
    conn = RowsCounted(sqlite3.connect(path))
    read = cast(Any, conn)
    newest = _read_messages(read, CH, before=None, after=None, limit=200)
    assert [m.msg_serial for m in newest] == list(range(51, 251))
    assert newest[0].data == 'message 50, "quoted" and ünïcode\n'
    assert [m.msg_serial for m in _read_messages(read, CH, before=11, after=None, limit=5)] == [
        6,
        7,
        8,
        9,
        10,
    ]
    assert [m.msg_serial for m in _read_messages(read, CH, before=None, after=245, limit=9)] == [
        246,
        247,
        248,
        249,
        250,
    ]
    assert [e.serial for e in _read_events(read, CH, 240, 100)] == list(range(241, 251))
    assert _read_events(read, CH, 250, 100) == []
    assert conn.rows == 5
    conn.conn.close()


async def test_a_snapshot_is_read_as_one_row(tmp_path: Path) -> None:
    # Head, rewind, replay and live objects in one statement: consistent without a
    # transaction, and one row for sqlite3 to step to.
    path = tmp_path / "x.db"
    async with store_at(path) as store:
        for i in range(30):
            await store.append(create(i))
        await store.append(object_op({"type": "counter.create", "value": 5}))
        await store.append(
            object_op({"type": "map.set", "object_id": "root", "key": "k", "value": 'a "b"'})
        )
        expected = await store.objects(CH)
    conn = RowsCounted(sqlite3.connect(path))
    snap = _read_snapshot(
        cast(Any, conn), CH, from_serial=25, rewind=4, replay_limit=3, objects=True
    )
    assert (snap.serial, snap.first_serial) == (32, 1)
    assert [m.data for m in snap.messages] == [26, 27, 28, 29]
    assert snap.events is not None and [e.serial for e in snap.events] == [26, 27, 28]
    assert snap.objects == ObjectsSnapshot(serial=32, objects=expected.objects)
    assert snap.objects.objects["root"].entries["k"] == 'a "b"'
    assert conn.rows == 1
    # Past the head, the replay is refused; without objects, none are read.
    late = _read_snapshot(
        cast(Any, conn), CH, from_serial=33, rewind=0, replay_limit=3, objects=False
    )
    assert (late.events, late.objects, late.messages) == (None, None, [])
    # A channel with no event yet: the epoch reads report, an empty log.
    empty = _read_snapshot(
        cast(Any, conn), "room:new", from_serial=0, rewind=5, replay_limit=3, objects=True
    )
    assert (empty.serial, empty.first_serial, empty.events, empty.messages) == (0, 1, [], [])
    assert empty.objects is not None and set(empty.objects.objects) == {"root"}
    conn.conn.close()


async def test_pages_past_sqlites_largest_string_are_read_row_by_row(tmp_path: Path) -> None:
    # One row of a page must stay under SQLite's largest string (1 GB by default: a thousand
    # of the largest streamed messages). Here that limit is lowered to 2,000 bytes.
    path = tmp_path / "x.db"
    async with store_at(path) as store:
        for i in range(20):
            await store.append(create(f"{i} " + "x" * 300))
        await store.append(object_op({"type": "counter.create", "value": 5}))
        expected = await store.snapshot(CH, from_serial=2, rewind=15, replay_limit=12, objects=True)
    conn = sqlite3.connect(path)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 2000)
    with pytest.raises(sqlite3.DataError):  # the one-row read is refused
        conn.execute("SELECT group_concat(body) FROM messages").fetchone()
    newest = _read_messages(conn, CH, before=None, after=None, limit=15)
    assert [m.msg_serial for m in newest] == list(range(6, 21))
    assert [m.msg_serial for m in _read_messages(conn, CH, before=None, after=3, limit=4)] == [
        4,
        5,
        6,
        7,
    ]
    assert [e.serial for e in _read_events(conn, CH, 2, 12)] == list(range(3, 15))
    snap = _read_snapshot(conn, CH, from_serial=2, rewind=15, replay_limit=12, objects=True)
    assert snap == expected
    assert snap.objects is not None
    assert [o.value for o in snap.objects.objects.values() if o.type == "counter"] == [5]
    assert not conn.in_transaction
    conn.close()
