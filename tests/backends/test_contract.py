"""The one contract suite every Store runs (``memory://`` and ``sqlite:///``, see conftest)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest

from roomcast.backends import Store, StoreOptions
from roomcast.backends.base import ResumeSession
from roomcast.backends.local import now_ms
from roomcast.protocol.errors import BadRequest, Conflict, NotFound, TooLarge
from roomcast.protocol.messages import Event, PresenceEvent, PresenceMember, SignalEvent

CH = "room:test"

MakeStore = Callable[..., Awaitable[Store]]


class Recorder:
    """A bus sink that keeps what it was given, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.calls: list[tuple[str, list[Event]]] = []
        self.presence: list[PresenceEvent] = []
        self.signals: list[SignalEvent] = []
        self.epochs: list[tuple[str, str]] = []

    def on_events(self, channel: str, events: list[Event]) -> None:
        assert all(e.channel == channel for e in events)
        self.calls.append((channel, list(events)))
        self.events.extend(events)

    def on_presence(self, event: PresenceEvent) -> None:
        self.presence.append(event)

    def on_signal(self, event: SignalEvent) -> None:
        self.signals.append(event)

    def on_epoch(self, channel: str, epoch: str) -> None:
        self.epochs.append((channel, epoch))

    def occupancy(self, channel: str) -> int:
        return 0  # no subscribers: the bus may let a channel go

    def serials(self, channel: str) -> list[int]:
        return [e.serial for e in self.events if e.channel == channel]


@pytest.fixture
def recorder(store: Store) -> Recorder:
    sink = Recorder()
    store.bus.bind(sink)
    return sink


def create(
    channel: str = CH, data: Any = "hi", *, client: str | None = "alice", **fields: Any
) -> Event:
    return Event(
        channel=channel,
        serial=0,
        type="create",
        client_id=client,
        timestamp=0,
        data=data,
        name=fields.pop("name", "text"),
        **fields,
    )


def event(
    type_: Any, msg_serial: int, *, channel: str = CH, client: str | None = "alice", **fields: Any
) -> Event:
    return Event(
        channel=channel,
        serial=0,
        type=type_,
        msg_serial=msg_serial,
        client_id=client,
        timestamp=0,
        **fields,
    )


async def serial_of(store: Store, e: Event, key: str | None = None) -> int:
    result = await store.append(e, idempotency_key=key)
    assert result.serial is not None and result.event is not None
    return result.serial


async def latest(store: Store, channel: str = CH) -> int:
    return (await store.snapshot(channel, from_serial=None, rewind=0)).serial


# --------------------------------------------------------------------------- serials, epochs


async def test_serials_start_at_one_gap_free_and_per_channel(store: Store) -> None:
    a = [await serial_of(store, create("room:a", i)) for i in range(5)]
    b = [await serial_of(store, create("room:b", i)) for i in range(3)]
    a += [await serial_of(store, create("room:a", "more"))]
    assert a == [1, 2, 3, 4, 5, 6]
    assert b == [1, 2, 3]
    events = await store.read_events("room:a", 0, 100)
    assert [e.serial for e in events] == a
    assert [e.data for e in events] == [0, 1, 2, 3, 4, "more"]
    assert all(e.timestamp > 0 for e in events)
    assert [e.serial for e in await store.read_events("room:a", 2, 2)] == [3, 4]


async def test_epoch_is_stable_from_the_first_read_to_the_first_event(store: Store) -> None:
    first = await store.snapshot("room:new", from_serial=None, rewind=10)
    assert first.serial == 0 and first.first_serial == 1 and first.messages == []
    again = await store.snapshot("room:new", from_serial=0, rewind=0)
    assert again.epoch == first.epoch
    assert again.events == []
    await store.append(create("room:new"))
    after = await store.snapshot("room:new", from_serial=None, rewind=0)
    assert after.epoch == first.epoch and after.serial == 1
    info = await store.channel_info("room:new")
    assert info is not None and info.epoch == first.epoch and info.serial == 1

    await store.append(create("room:other"))
    other = await store.snapshot("room:other", from_serial=None, rewind=0)
    assert other.epoch != first.epoch
    assert (await store.snapshot("room:other", from_serial=None, rewind=0)).epoch == other.epoch


async def test_concurrent_appends_are_gap_free_and_reach_the_bus_in_order(
    store: Store, recorder: Recorder
) -> None:
    n = 2000
    results = await asyncio.gather(*(store.append(create(data=i)) for i in range(n)))
    serials = [r.serial for r in results]
    # Call order is serial order, so each caller gets the serial of its position.
    assert serials == list(range(1, n + 1))
    assert recorder.serials(CH) == list(range(1, n + 1))
    assert [e.data for e in recorder.events] == list(range(n))
    assert recorder.events == [r.event for r in results]
    assert await latest(store) == n


# --------------------------------------------------------------------------- idempotency


async def test_repeated_idempotency_key_returns_the_first_serial(
    store: Store, recorder: Recorder
) -> None:
    await store.append(create(data="before"))
    first = await store.append(create(data="x"), idempotency_key="k1")
    again = await store.append(create(data="changed"), idempotency_key="k1")
    assert first.serial == 2 and not first.duplicate
    assert again.serial == 2 and again.duplicate and again.event is None
    other_channel = await store.append(create("room:other"), idempotency_key="k1")
    assert other_channel.serial == 1 and not other_channel.duplicate
    messages, _ = await store.history(CH, before=None, after=None, limit=100)
    assert [m.data for m in messages] == ["before", "x"]
    assert await latest(store) == 2
    assert recorder.serials(CH) == [1, 2]


async def test_idempotency_key_may_be_reused_after_the_window(make_store: MakeStore) -> None:
    store = await make_store(StoreOptions(dedup_window_s=0.2))
    assert (await store.append(create(), idempotency_key="k")).serial == 1
    assert (await store.append(create(), idempotency_key="k")).duplicate
    await asyncio.sleep(0.25)
    await store.purge(now_ms(), 0)
    reused = await store.append(create(data="new"), idempotency_key="k")
    assert reused.serial == 2 and not reused.duplicate
    await asyncio.sleep(0.25)  # expired even without a purge
    assert (await store.append(create(), idempotency_key="k")).serial == 3


# --------------------------------------------------------------------------- history


async def test_history_pages_both_ways_without_gap_or_duplicate(store: Store) -> None:
    n = 2500
    for start in range(0, n, 500):
        await store.append_batch([create(data=i) for i in range(start, start + 500)], [None] * 500)
    everything = list(range(1, n + 1))

    seen: list[int] = []
    before: int | None = None
    while True:
        page, more = await store.history(CH, before=before, after=None, limit=100)
        serials = [m.msg_serial for m in page]
        assert serials == sorted(serials) and len(serials) == 100
        seen = serials + seen
        if not more:
            break
        before = serials[0]
    assert seen == everything

    seen = []
    after = 0
    while True:
        page, more = await store.history(CH, before=None, after=after, limit=1000)
        seen += [m.msg_serial for m in page]
        if not more:
            break
        after = page[-1].msg_serial
    assert seen == everything
    assert len(page) == 500  # 1000 + 1000 + 500

    newest, more = await store.history(CH, before=None, after=None, limit=3)
    assert [m.msg_serial for m in newest] == [2498, 2499, 2500] and more
    oldest, more = await store.history(CH, before=4, after=None, limit=100)
    assert [m.msg_serial for m in oldest] == [1, 2, 3] and not more
    exact, more = await store.history(CH, before=11, after=None, limit=10)
    assert [m.msg_serial for m in exact] == list(range(1, 11)) and not more
    tail, more = await store.history(CH, before=None, after=2490, limit=10)
    assert [m.msg_serial for m in tail] == list(range(2491, 2501)) and not more
    assert [m.data for m in tail] == list(range(2490, 2500))
    assert await store.history("room:none", before=None, after=None, limit=10) == ([], False)


# --------------------------------------------------------------------------- snapshot


async def test_snapshot_rewind_and_from_serial(store: Store) -> None:
    for i in range(10):
        await store.append(create(data=i))
    await store.append(event("update", 2, data="two"))  # serial 11

    snap = await store.snapshot(CH, from_serial=None, rewind=3)
    assert snap.serial == 11 and snap.first_serial == 1 and snap.events is None
    assert [m.msg_serial for m in snap.messages] == [8, 9, 10]
    all_messages = await store.snapshot(CH, from_serial=None, rewind=100)
    assert [m.msg_serial for m in all_messages.messages] == list(range(1, 11))
    assert all_messages.messages[1].data == "two"

    later = await store.snapshot(CH, from_serial=7, rewind=0)
    assert later.messages == []
    assert later.events is not None
    assert [e.serial for e in later.events] == [8, 9, 10, 11]
    assert later.events[-1].type == "update" and later.events[-1].msg_serial == 2

    assert (await store.snapshot(CH, from_serial=11, rewind=0)).events == []
    assert (await store.snapshot(CH, from_serial=12, rewind=0)).events is None
    from_zero = await store.snapshot(CH, from_serial=0, rewind=0)
    assert from_zero.events is not None
    assert [e.serial for e in from_zero.events] == list(range(1, 12))
    assert from_zero.events == await store.read_events(CH, 0, 100)


# --------------------------------------------------------------------------- rollup


async def test_update_replaces_data_merges_extras_and_final_status_is_final(
    store: Store, recorder: Recorder
) -> None:
    s = await serial_of(store, create(data="draft", extras={"a": 1, "b": 2}, streaming=True))
    await store.append(event("update", s, data={"v": 2}, extras={"b": None, "c": 3}))
    message = await store.get_message(CH, s)
    assert message is not None
    assert message.data == {"v": 2}
    assert message.extras == {"a": 1, "c": 3}
    assert message.status == "streaming"

    done = await store.append(event("update", s, status="complete"))
    assert done.serial == 3
    with pytest.raises(Conflict):
        await store.append(event("update", s, status="failed"))
    repeat = await store.append(event("update", s, status="complete"))
    assert repeat.serial is None and repeat.event is None and not repeat.duplicate
    message = await store.get_message(CH, s)
    assert message is not None and message.status == "complete"
    assert message.updated_at >= message.timestamp
    assert await latest(store) == 3
    assert recorder.serials(CH) == [1, 2, 3]


async def test_delete_clears_data_once(store: Store) -> None:
    s = await serial_of(store, create(data="secret", client="bob"))
    deleted = await store.append(event("delete", s, client="bob"))
    assert deleted.serial == 2
    message = await store.get_message(CH, s)
    assert message is not None
    assert message.data is None and message.deleted
    assert message.client_id == "bob" and message.msg_serial == s
    again = await store.append(event("delete", s, client="bob"))
    assert again.serial is None
    assert await latest(store) == 2
    history, _ = await store.history(CH, before=None, after=None, limit=10)
    assert history == [message]


async def test_append_only_while_streaming_and_only_by_the_author(store: Store) -> None:
    s = await serial_of(store, create(data="Hel", streaming=True))
    assert (await store.append(event("append", s, data="lo"))).serial == 2
    with pytest.raises(Conflict):
        await store.append(event("append", s, client="mallory", data="!"))
    await store.append(event("update", s, status="complete"))
    with pytest.raises(Conflict):
        await store.append(event("append", s, data=" again"))
    plain = await serial_of(store, create(data="not streaming"))
    with pytest.raises(Conflict):
        await store.append(event("append", plain, data="x"))
    message = await store.get_message(CH, s)
    assert message is not None and message.data == "Hello" and message.status == "complete"
    assert await latest(store) == 4


async def test_stream_size_is_capped(make_store: MakeStore) -> None:
    store = await make_store(StoreOptions(max_stream_bytes=10))
    s = await serial_of(store, create(data="12345", streaming=True))
    with pytest.raises(TooLarge):
        await store.append(event("append", s, data="678901"))
    assert (await store.append(event("append", s, data="67890"))).serial == 2


async def test_cancel_records_who_and_blocks_appends(store: Store) -> None:
    s = await serial_of(store, create(data="thinking", streaming=True, client="agent"))
    cancel = await store.append(event("cancel", s, client="bob", reason="stop"))
    assert cancel.serial == 2
    assert cancel.event is not None and cancel.event.reason == "stop"
    message = await store.get_message(CH, s)
    assert message is not None and message.cancelled_by == "bob" and message.status == "streaming"
    assert (await store.append(event("cancel", s, client="carol"))).serial is None
    with pytest.raises(Conflict):
        await store.append(event("append", s, client="agent", data="more"))
    assert (await store.append(event("update", s, client="agent", status="cancelled"))).serial == 3
    message = await store.get_message(CH, s)
    assert message is not None and message.status == "cancelled" and message.cancelled_by == "bob"
    plain = await serial_of(store, create())
    with pytest.raises(Conflict):
        await store.append(event("cancel", plain, client="bob"))
    assert await latest(store) == 4


async def test_reactions_add_and_remove_once_per_client(store: Store) -> None:
    s = await serial_of(store, create())

    async def react(client: str, op: str, name: str = "👍") -> int | None:
        e = event("annotation", s, client=client, kind="reaction", name=name, op=op)
        return (await store.append(e)).serial

    assert await react("bob", "add") == 2
    assert await react("bob", "add") is None
    assert await react("carol", "add") == 3
    assert await react("carol", "add", "🎉") == 4
    message = await store.get_message(CH, s)
    assert message is not None and message.reactions == {"👍": ["bob", "carol"], "🎉": ["carol"]}
    assert await react("bob", "remove") == 5
    assert await react("bob", "remove") is None
    assert await react("carol", "remove", "🎉") == 6
    message = await store.get_message(CH, s)
    assert message is not None and message.reactions == {"👍": ["carol"]}
    assert await latest(store) == 6


@pytest.mark.parametrize(
    "type_, fields",
    [
        ("update", {"data": "x"}),
        ("append", {"data": "x"}),
        ("delete", {}),
        ("cancel", {}),
        ("annotation", {"kind": "reaction", "name": "x", "op": "add"}),
    ],
)
async def test_unknown_message_is_not_found_and_takes_no_serial(
    store: Store, recorder: Recorder, type_: str, fields: dict[str, Any]
) -> None:
    await store.append(create())
    with pytest.raises(NotFound):
        await store.append(event(type_, 99, **fields))
    with pytest.raises(NotFound):
        await store.append(event(type_, 1, channel="room:empty", **fields))
    assert await latest(store) == 1
    assert await store.channel_info("room:empty") is None
    assert (await store.append(create())).serial == 2
    assert recorder.serials(CH) == [1, 2]


def obj(op: dict[str, Any], *, channel: str = CH, client: str = "alice") -> Event:
    return Event(channel=channel, serial=0, type="object", client_id=client, timestamp=0, op=op)


async def test_object_ops_apply_in_serial_order_and_snapshot(
    store: Store, recorder: Recorder
) -> None:
    made = await store.append(obj({"type": "map.create", "entries": {"title": "lunch"}}))
    assert made.serial == 1 and made.event is not None and made.event.object_id == "map-1"
    counter = await store.append(obj({"type": "counter.create", "value": 2}))
    assert counter.event is not None and counter.event.object_id == "counter-2"
    await store.append(obj({"type": "counter.inc", "object_id": "counter-2", "amount": 3}))
    await store.append(obj({"type": "map.set", "object_id": "map-1", "key": "n", "value": 7}))
    await store.append(obj({"type": "map.remove", "object_id": "map-1", "key": "title"}))
    ref = {"object_id": "map-1"}
    await store.append(obj({"type": "map.set", "object_id": "root", "key": "m", "value": ref}))
    snap = await store.objects(CH)
    assert snap.serial == 6
    assert {k: msgspec.to_builtins(v) for k, v in snap.objects.items()} == {
        "root": {"type": "map", "entries": {"m": {"object_id": "map-1"}}},
        "map-1": {"type": "map", "entries": {"n": 7}},
        "counter-2": {"type": "counter", "value": 5},
    }
    assert await store.get_object(CH, "counter-2") == snap.objects["counter-2"]
    attach = await store.snapshot(CH, from_serial=None, rewind=0, objects=True)
    assert attach.objects == snap
    assert (await store.snapshot(CH, from_serial=None, rewind=0)).objects is None
    # Object events are in the log, not in history.
    assert await store.history(CH, before=None, after=None, limit=10) == ([], False)
    assert recorder.serials(CH) == [1, 2, 3, 4, 5, 6]


async def test_a_channel_without_objects_has_an_empty_root(store: Store) -> None:
    snap = await store.objects("room:none")
    assert snap.serial == 0 and msgspec.to_builtins(snap.objects) == {
        "root": {"type": "map", "entries": {}}
    }
    assert await store.get_object("room:none", "root") is None


@pytest.mark.parametrize(
    ("op", "error"),
    [
        ({"type": "map.set", "object_id": "nope", "key": "k", "value": 1}, NotFound),
        ({"type": "counter.inc", "object_id": "nope", "amount": 1}, NotFound),
        ({"type": "counter.inc", "object_id": "root", "amount": 1}, Conflict),
        ({"type": "map.set", "object_id": "counter-1", "key": "k", "value": 1}, Conflict),
        (
            {"type": "map.set", "object_id": "root", "key": "k", "value": {"object_id": "x"}},
            NotFound,
        ),
        ({"type": "map.create", "entries": {"k": {"object_id": "x"}}}, NotFound),
    ],
)
async def test_refused_object_ops_change_nothing(
    store: Store, recorder: Recorder, op: dict[str, Any], error: type[Exception]
) -> None:
    await store.append(obj({"type": "counter.create", "value": 1}))
    before = await store.objects(CH)
    with pytest.raises(error):
        await store.append(obj(op))
    assert await store.objects(CH) == before
    assert await latest(store) == 1 and recorder.serials(CH) == [1]


async def test_object_state_is_capped_per_channel(make_store: MakeStore) -> None:
    store = await make_store(StoreOptions(max_objects_bytes=200))
    await store.append(obj({"type": "map.set", "object_id": "root", "key": "a", "value": "x"}))
    with pytest.raises(TooLarge):
        await store.append(
            obj({"type": "map.set", "object_id": "root", "key": "b", "value": "y" * 300})
        )
    # Shrinking is always allowed, and frees room.
    await store.append(obj({"type": "map.remove", "object_id": "root", "key": "a"}))
    await store.append(
        obj({"type": "map.set", "object_id": "root", "key": "b", "value": "y" * 150})
    )
    assert await latest(store) == 3
    with pytest.raises(TooLarge):
        await store.append(obj({"type": "map.create", "entries": {"z": "w" * 100}}))


async def test_any_json_data_round_trips(store: Store) -> None:
    data = {"big": 2**70, "neg": -(2**65), "f": 0.1, "list": [None, True, "é"], "nested": {}}
    s = await serial_of(store, create(data=data, extras={"reply_to": 1, "n": 2**80}))
    message = await store.get_message(CH, s)
    assert message is not None and message.data == data
    assert message.extras == {"reply_to": 1, "n": 2**80}
    assert (await store.read_events(CH, 0, 1))[0].data == data


# --------------------------------------------------------------------------- batches


async def test_append_batch_stores_consecutive_serials(store: Store, recorder: Recorder) -> None:
    await store.append(create(data="first"))
    results = await store.append_batch(
        [create(data="a"), create(data="b"), event("update", 1, data="edited")],
        [None, "ka", None],
    )
    assert [r.serial for r in results] == [2, 3, 4]
    assert recorder.serials(CH) == [1, 2, 3, 4]
    assert recorder.calls[-1] == (CH, [r.event for r in results])
    dup = await store.append_batch([create(data="a again"), create(data="c")], ["ka", None])
    assert [(r.serial, r.duplicate) for r in dup] == [(3, True), (5, False)]
    messages, _ = await store.history(CH, before=None, after=None, limit=10)
    assert [m.data for m in messages] == ["edited", "a", "b", "c"]


async def test_append_batch_is_all_or_nothing(store: Store, recorder: Recorder) -> None:
    await store.append(create(data="first"))
    with pytest.raises(NotFound):
        await store.append_batch(
            [create(data="a"), event("update", 1, data="changed"), event("delete", 42)],
            ["kb", None, None],
        )
    assert await latest(store) == 1
    message = await store.get_message(CH, 1)
    assert message is not None and message.data == "first"
    assert recorder.serials(CH) == [1]
    # The key of the refused batch was not kept.
    again = await store.append(create(data="a"), idempotency_key="kb")
    assert again.serial == 2 and not again.duplicate
    with pytest.raises(BadRequest):
        await store.append_batch([create("room:a"), create("room:b")], [None, None])
    assert await store.channel_info("room:a") is None


# --------------------------------------------------------------------------- channels


async def test_channel_info_and_list_channels(store: Store) -> None:
    assert await store.channel_info("room:a") is None
    for name in ["room:b", "room:a", "chat:x", "room:c", "room:a"]:
        await store.append(create(name))
    await store.snapshot("room:only-snapshot", from_serial=None, rewind=0)
    assert await store.channel_info("room:only-snapshot") is None

    info = await store.channel_info("room:a")
    assert info is not None
    assert info.channel == "room:a" and info.serial == 2
    assert abs(info.updated_at - now_ms()) < 60_000

    rooms = await store.list_channels("room:", 100)
    assert [c.channel for c in rooms] == ["room:a", "room:b", "room:c"]
    assert [c.serial for c in rooms] == [2, 1, 1]
    assert rooms[0] == info
    assert [c.channel for c in await store.list_channels("room:", 2)] == ["room:a", "room:b"]
    assert [c.channel for c in await store.list_channels("", 100)] == [
        "chat:x",
        "room:a",
        "room:b",
        "room:c",
    ]
    assert await store.list_channels("nope", 10) == []


async def test_streaming_messages_finds_idle_streams_only(store: Store) -> None:
    idle = await serial_of(store, create("room:a", "x", streaming=True))
    done = await serial_of(store, create("room:a", "y", streaming=True))
    await store.append(event("update", done, channel="room:a", status="complete"))
    other = await serial_of(store, create("room:b", "z", streaming=True))
    await serial_of(store, create("room:b", "plain"))
    await asyncio.sleep(0.01)
    cutoff = now_ms()
    await asyncio.sleep(0.01)
    active = await serial_of(store, create("room:a", "fresh", streaming=True))

    found = await store.streaming_messages(cutoff, 100)
    assert sorted((ch, m.msg_serial) for ch, m in found) == [("room:a", idle), ("room:b", other)]
    assert all(m.status == "streaming" for _, m in found)
    assert len(await store.streaming_messages(cutoff, 1)) == 1
    assert (active, "room:a") not in [(m.msg_serial, ch) for ch, m in found]
    everything = await store.streaming_messages(now_ms() + 1000, 100)
    assert {m.msg_serial for ch, m in everything if ch == "room:a"} == {idle, active}


async def test_purge_with_retention_drops_old_events_and_messages(store: Store) -> None:
    for i in range(5):
        await store.append(create(data=i))
    await store.append(create("room:other"))
    await asyncio.sleep(0.01)
    old_until = now_ms()
    await asyncio.sleep(0.01)
    for i in range(5, 8):
        await store.append(create(data=i))
    now = now_ms()

    assert await store.purge(now, 0) == 0  # retention 0 keeps everything
    assert len(await store.read_events(CH, 0, 100)) == 8
    dropped = await store.purge(now, now - old_until - 1)
    assert dropped == 6  # five here, one on room:other

    snap = await store.snapshot(CH, from_serial=None, rewind=100)
    assert snap.serial == 8 and snap.first_serial == 6
    assert [m.msg_serial for m in snap.messages] == [6, 7, 8]
    assert (await store.snapshot(CH, from_serial=0, rewind=0)).events is None
    assert (await store.snapshot(CH, from_serial=4, rewind=0)).events is None
    kept = await store.snapshot(CH, from_serial=5, rewind=0)
    assert kept.events is not None and [e.serial for e in kept.events] == [6, 7, 8]
    assert [e.serial for e in await store.read_events(CH, 0, 100)] == [6, 7, 8]
    messages, more = await store.history(CH, before=None, after=None, limit=100)
    assert [m.data for m in messages] == [5, 6, 7] and not more
    assert await store.get_message(CH, 1) is None

    other = await store.snapshot("room:other", from_serial=1, rewind=10)
    assert other.serial == 1 and other.first_serial == 2 and other.events == []
    assert other.messages == []
    assert (await store.append(create("room:other"))).serial == 2
    assert (await store.channel_info("room:other")) is not None


# --------------------------------------------------------------------------- ephemeral state


def member(client: str, connection: str, data: Any = None) -> PresenceMember:
    return PresenceMember(client_id=client, connection_id=connection, data=data, timestamp=1)


async def test_presence_set_remove_members(store: Store) -> None:
    await store.presence_set(CH, member("alice", "c1", {"s": 1}), "node-1")
    await store.presence_set(CH, member("bob", "c2"), "node-1")
    await store.presence_set(CH, member("alice", "c1", {"s": 2}), "node-1")
    await store.presence_set("room:other", member("carol", "c3"), "node-1")
    members = await store.presence_members(CH)
    assert sorted((m.client_id, m.connection_id, m.data) for m in members) == [
        ("alice", "c1", {"s": 2}),
        ("bob", "c2", None),
    ]
    assert await store.presence_remove(CH, "alice", "c1")
    assert not await store.presence_remove(CH, "alice", "c1")
    assert not await store.presence_remove("room:nobody", "alice", "c1")
    assert [m.client_id for m in await store.presence_members(CH)] == ["bob"]
    assert [m.client_id for m in await store.presence_members("room:other")] == ["carol"]


async def test_reap_dead_nodes_reaps_only_their_members(store: Store) -> None:
    await store.node_heartbeat("alive", 60)
    await store.node_heartbeat("dying", 0.05)
    await store.presence_set(CH, member("alice", "c1"), "alive")
    await store.presence_set(CH, member("bob", "c2"), "dying")
    await store.presence_set("room:other", member("carol", "c3"), "dying")
    assert await store.reap_dead_nodes() == []
    await asyncio.sleep(0.1)
    reaped = await store.reap_dead_nodes()
    assert sorted((ch, m.client_id) for ch, m in reaped) == [("room:other", "carol"), (CH, "bob")]
    assert [m.client_id for m in await store.presence_members(CH)] == ["alice"]
    assert await store.presence_members("room:other") == []
    assert await store.reap_dead_nodes() == []


async def test_a_leave_with_a_holder_removes_only_what_that_node_holds(store: Store) -> None:
    await store.presence_set(CH, member("alice", "c1", "mood"), "node-a")
    assert not await store.presence_remove(CH, "alice", "c1", holder="node-b")
    assert await store.presence_adopt(CH, "alice", "c1", "node-b") == member("alice", "c1", "mood")
    assert not await store.presence_remove(CH, "alice", "c1", holder="node-a")  # it moved
    assert [m.data for m in await store.presence_members(CH)] == ["mood"]
    assert await store.presence_remove(CH, "alice", "c1", holder="node-b")
    assert await store.presence_members(CH) == []
    assert await store.presence_adopt(CH, "alice", "c1", "node-b") is None  # gone: not back


async def test_an_adopted_member_is_reaped_with_its_new_node_only(store: Store) -> None:
    await store.node_heartbeat("old", 0.05)
    await store.node_heartbeat("new", 60)
    await store.presence_set(CH, member("alice", "c1"), "old")
    await store.presence_set(CH, member("bob", "c2"), "old")
    await store.presence_adopt(CH, "alice", "c1", "new")  # alice resumed on "new"
    await asyncio.sleep(0.1)
    assert [(ch, m.client_id) for ch, m in await store.reap_dead_nodes()] == [(CH, "bob")]
    assert [m.client_id for m in await store.presence_members(CH)] == ["alice"]


async def test_a_node_known_only_from_its_members_is_reaped_too(store: Store) -> None:
    """A member entered on a node the store does not know alive (its heartbeat entry was
    lost) registers the node, so that it is reaped if the node never beats again."""
    await store.node_heartbeat("gone", 0.05)
    await asyncio.sleep(0.1)
    assert await store.reap_dead_nodes() == []  # no members: nothing to report
    await store.presence_set(CH, member("alice", "c1"), "gone")  # the ttl it beat with
    assert await store.reap_dead_nodes() == []
    await asyncio.sleep(0.1)
    assert [m.client_id for _, m in await store.reap_dead_nodes()] == ["alice"]


async def test_the_lifetime_stays_the_same_while_the_data_lives(store: Store) -> None:
    first = await store.lifetime()
    assert first and await store.lifetime() == first


async def test_claim_is_exclusive_until_its_ttl(store: Store) -> None:
    assert await store.claim("trigger:1", "worker-a", 0.1)
    assert not await store.claim("trigger:1", "worker-b", 0.1)
    assert await store.claim("trigger:1", "worker-a", 0.1)  # the owner may renew
    assert await store.claim("trigger:2", "worker-b", 0.1)
    await asyncio.sleep(0.15)
    assert await store.claim("trigger:1", "worker-b", 10)
    assert not await store.claim("trigger:1", "worker-a", 10)


async def test_counters_add_up_and_expire(store: Store) -> None:
    assert await store.incr_counter("rate:alice", 1, 0.1) == 1
    assert await store.incr_counter("rate:alice", 2.5, 0.1) == 3.5
    assert await store.incr_counter("rate:bob", 1, 0.1) == 1
    await asyncio.sleep(0.15)
    assert await store.incr_counter("rate:alice", 1, 0.1) == 1


async def test_set_changes_made_at_once_all_hold_and_the_set_expires(store: Store) -> None:
    rooms = [f"room:{i}" for i in range(40)]
    await asyncio.gather(
        *(store.change_set("subs:a", room, present=True, ttl_s=60) for room in rooms)
    )
    assert await store.set_members("subs:a") == set(rooms)
    await asyncio.gather(
        *(store.change_set("subs:a", room, present=False, ttl_s=60) for room in rooms[::2]),
        store.change_set("subs:a", "room:new", present=True, ttl_s=60),
    )
    assert await store.set_members("subs:a") == {*rooms[1::2], "room:new"}
    assert await store.set_members("subs:b") == set()
    await store.change_set("subs:b", "room:0", present=False, ttl_s=60)  # nothing to remove
    assert await store.set_members("subs:b") == set()
    await store.change_set("subs:c", "room:0", present=True, ttl_s=0.1)
    await asyncio.sleep(0.15)
    assert await store.set_members("subs:c") == set()
    await store.change_set("subs:c", "room:1", present=True, ttl_s=60)  # a new set
    assert await store.set_members("subs:c") == {"room:1"}


async def test_resume_session_works_once_and_expires(store: Store) -> None:
    session = ResumeSession(
        client_id="alice",
        connection_id="c1",
        presence={CH: {"status": "idle"}},
        expires_at=time.time() + 60,
    )
    await store.save_session("key-1", session)
    assert await store.take_session("key-1") == session
    assert await store.take_session("key-1") is None
    assert await store.take_session("unknown") is None
    expired = ResumeSession("alice", "c2", {}, expires_at=time.time() - 1)
    await store.save_session("key-2", expired)
    assert await store.take_session("key-2") is None


async def test_a_kept_session_is_current_until_taken_then_refused(store: Store) -> None:
    later = time.time() + 60
    assert await store.keep_session("key-1", ResumeSession("alice", "c1", {}, later))
    assert await store.keep_session("key-1", ResumeSession("alice", "c1", {CH: 1}, later))
    taken = await store.take_session("key-1")
    assert taken == ResumeSession("alice", "c1", {CH: 1}, later)
    # The node that held the connection learns that the client resumed elsewhere.
    assert not await store.keep_session("key-1", ResumeSession("alice", "c1", {}, later))
    assert await store.take_session("key-1") is None
    # A plain save (the node giving the key back) replaces the mark.
    await store.save_session("key-1", ResumeSession("alice", "c1", {}, later))
    assert await store.take_session("key-1") is not None


async def test_ping_and_events_match_what_the_bus_got(store: Store, recorder: Recorder) -> None:
    await store.ping()
    results = await asyncio.gather(
        *(store.append(create(f"room:{i % 3}", i)) for i in range(30)),
    )
    for i in range(3):
        channel = f"room:{i}"
        stored = await store.read_events(channel, 0, 100)
        assert [e for e in recorder.events if e.channel == channel] == stored
        assert [e.serial for e in stored] == list(range(1, 11))
    assert all(r.event is not None for r in results)


async def test_snapshot_replay_is_one_page_and_read_events_pages_the_rest(store: Store) -> None:
    for k in range(25):
        await store.append(create(data=k))
    snap = await store.snapshot(CH, from_serial=3, rewind=0, replay_limit=10)
    assert snap.events is not None
    assert [e.serial for e in snap.events] == list(range(4, 14))
    rest = await store.read_events(CH, 13, 100)
    assert [e.serial for e in rest] == list(range(14, 26))
