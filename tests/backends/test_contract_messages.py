"""The contract suite, continued: what a message takes after a change, what a deleted or
non-text message refuses, and what reading a channel with no events leaves behind. Every
Store runs it (see conftest)."""

from __future__ import annotations

import sqlite3

import msgspec
import pytest
from test_contract import CH, MakeStore, create, event, latest, serial_of

from roomcast.backends import Store, StoreOptions
from roomcast.backends.measured import MeasuredStore
from roomcast.backends.memory import MemoryStore
from roomcast.backends.redis_store import RedisStore
from roomcast.backends.sqlite import SqliteStore
from roomcast.protocol.errors import Conflict, NotFound, TooLarge
from roomcast.protocol.messages import Message

# --------------------------------------------------------------------------- message size


def counted(message: Message) -> int:
    """What the rule counts: extras, reactions and data that is not text, as JSON."""
    size = len(msgspec.json.encode(message.extras)) if message.extras else 0
    size += len(msgspec.json.encode(message.reactions)) if message.reactions else 0
    if message.data is not None and not isinstance(message.data, str):
        size += len(msgspec.json.encode(message.data))
    return size


async def test_updates_cannot_grow_a_message_past_max_message_bytes(make_store: MakeStore) -> None:
    store = await make_store(StoreOptions(max_message_bytes=1000))
    s = await serial_of(store, create(data="hi"))
    await store.append(event("update", s, extras={"a": "x" * 400}))
    with pytest.raises(TooLarge, match=f"message {s} would take"):
        await store.append(event("update", s, extras={"b": "y" * 700}))  # each patch is small
    with pytest.raises(TooLarge):
        await store.append(event("update", s, data={"list": ["z" * 700]}))  # data counts too
    assert await latest(store) == 2  # refused: no serial
    # A change that takes room out first fits.
    await store.append(event("update", s, extras={"a": None, "b": "y" * 700}))
    message = await store.get_message(CH, s)
    assert message is not None and set(message.extras) == {"b"} and counted(message) <= 1000


async def test_reactions_count_against_max_message_bytes(make_store: MakeStore) -> None:
    store = await make_store(StoreOptions(max_message_bytes=300))
    s = await serial_of(store, create(data="hi"))
    refused = 0
    for i in range(40):
        react = event("annotation", s, client=f"c{i}", kind="reaction", name=f"r{i}", op="add")
        try:
            await store.append(react)
        except TooLarge:
            refused += 1
    message = await store.get_message(CH, s)
    assert message is not None and refused > 0 and counted(message) <= 300
    # Taking a reaction back always goes.
    [name] = list(message.reactions)[:1]
    gone = event("annotation", s, client=message.reactions[name][0], kind="reaction")
    assert (await store.append(msgspec.structs.replace(gone, name=name, op="remove"))).serial


async def test_streamed_text_is_bounded_by_max_stream_bytes_not_the_message(
    make_store: MakeStore,
) -> None:
    options = StoreOptions(max_message_bytes=100, max_stream_bytes=1000)
    store = await make_store(options)
    s = await serial_of(store, create(data="", streaming=True, extras={"reply_to": 1}))
    for _ in range(5):
        await store.append(event("append", s, data="t" * 150))
    end = event("update", s, status="complete", extras={"usage": {"output_tokens": 200}})
    assert (await store.append(end)).serial is not None
    like = event("annotation", s, client="bob", kind="reaction", name="ok", op="add")
    assert (await store.append(like)).serial is not None
    message = await store.get_message(CH, s)
    assert message is not None and len(message.data) == 750 and message.status == "complete"


# --------------------------------------------------------------------------- deleted, not text


async def test_a_deleted_message_refuses_every_later_change(store: Store) -> None:
    s = await serial_of(store, create(data="Hel", streaming=True))
    await store.append(event("annotation", s, client="bob", kind="reaction", name="a", op="add"))
    await store.append(event("delete", s))
    changes = [
        event("update", s, data="back"),
        event("update", s, extras={"k": 1}),
        event("update", s, status="complete"),
        event("append", s, data="lo"),
        event("cancel", s, client="bob"),
        event("annotation", s, client="bob", kind="reaction", name="b", op="add"),
        event("annotation", s, client="bob", kind="reaction", name="a", op="remove"),
    ]
    for change in changes:
        with pytest.raises(Conflict, match=f"message {s} is deleted"):
            await store.append(change)
    assert (await store.append(event("delete", s))).serial is None  # still a no-op
    assert await latest(store) == 3
    message = await store.get_message(CH, s)
    assert message is not None and message.deleted and message.data is None
    # The sweeper leaves it: nobody may end it, and it streams no more.
    assert all(m.msg_serial != s for _, m in await store.streaming_messages(10**15, 10))


async def test_an_append_to_data_that_is_not_text_is_a_conflict(store: Store) -> None:
    s = await serial_of(store, create(data="Hel", streaming=True))
    await store.append(event("update", s, data={"parts": ["Hel"]}))
    with pytest.raises(Conflict, match=f"message {s}'s data is not text: it cannot be appended"):
        await store.append(event("append", s, data="lo"))
    assert await latest(store) == 2
    await store.append(event("update", s, data=None))  # null is empty text
    assert (await store.append(event("append", s, data="lo"))).serial == 4
    message = await store.get_message(CH, s)
    assert message is not None and message.data == "lo"


# --------------------------------------------------------------------------- empty channels


async def footprint(store: Store) -> int:
    """What the store keeps for channels: logs, rows or keys (channel-tagged)."""
    inner = store.inner if isinstance(store, MeasuredStore) else store
    if isinstance(inner, MemoryStore):
        return len(inner._logs)
    if isinstance(inner, SqliteStore):
        conn = sqlite3.connect(inner.path)
        try:
            return int(conn.execute("SELECT count(*) FROM channels").fetchone()[0])
        finally:
            conn.close()
    assert isinstance(inner, RedisStore)
    found = 0
    async for _ in inner.redis.scan_iter(match=f"{inner.k.prefix}:{{*", count=1000):
        found += 1  # on a cluster, every master is scanned
    return found


async def test_reading_channels_with_no_events_leaves_nothing_behind(store: Store) -> None:
    for i in range(30):
        channel = f"room:unused-{i}"
        await store.snapshot(channel, from_serial=0, rewind=10, objects=True)
        await store.snapshot(channel, from_serial=None, rewind=0)
        await store.objects(channel)
        await store.history(channel, before=None, after=None, limit=10)
        await store.read_events(channel, 0, 10)
        assert await store.get_message(channel, 1) is None
        with pytest.raises(NotFound):  # a refused write leaves nothing either
            await store.append(event("update", 1, channel=channel, data="x"))
    assert await footprint(store) == 0
    assert await store.list_channels("room:", 100) == []
    assert await store.channel_info("room:unused-0") is None


async def test_an_empty_channel_reports_the_epoch_its_first_event_fixes(store: Store) -> None:
    channel = "room:later"
    empty = await store.snapshot(channel, from_serial=0, rewind=10, objects=True)
    assert (empty.serial, empty.first_serial, empty.messages, empty.events) == (0, 1, [], [])
    assert empty.objects is not None and empty.objects.serial == 0
    assert (await store.snapshot(channel, from_serial=3, rewind=0)).events is None
    assert (await store.snapshot(channel, from_serial=None, rewind=0)).epoch == empty.epoch
    other = await store.snapshot("room:later-too", from_serial=None, rewind=0)
    assert other.epoch != empty.epoch

    # A client attached above, and resumes from serial 0 after the first event came.
    first = await store.append(create(channel, "first"))
    resumed = await store.snapshot(channel, from_serial=0, rewind=0)
    assert resumed.epoch == empty.epoch
    assert resumed.events == [first.event]
    info = await store.channel_info(channel)
    assert info is not None and info.epoch == empty.epoch
    assert await footprint(store) > 0
