"""The append rollup and the stream sweeper on their own, over a real MemoryStore."""

from __future__ import annotations

import asyncio

import pytest

from roomcast.backends.base import Appended, StoreOptions
from roomcast.backends.local import LocalBus
from roomcast.backends.measured import MeasuredStore
from roomcast.backends.memory import MemoryStore
from roomcast.core.authz import Principal
from roomcast.core.node import Node
from roomcast.core.streams import LINGER_S, AppendRollup, StreamSweeper
from roomcast.protocol.capabilities import ALL
from roomcast.protocol.errors import Conflict, NotFound, TooLarge
from roomcast.protocol.messages import Append, Event, Publish
from roomcast.settings import Settings

CHANNEL = "room:a"


def event(type_: str, client_id: str | None, **fields: object) -> Event:
    return Event(channel=CHANNEL, serial=0, type=type_, client_id=client_id, timestamp=0, **fields)  # type: ignore[arg-type]


async def setup(
    rollup_ms: float = 50, max_stream_bytes: int = 1024 * 1024
) -> tuple[MemoryStore, AppendRollup, int]:
    store = MemoryStore(LocalBus(), StoreOptions(max_stream_bytes=max_stream_bytes))
    rollup = AppendRollup(
        store, Settings(store="memory://", rollup_ms=rollup_ms, max_stream_bytes=max_stream_bytes)
    )
    created = await store.append(event("create", "a", data="", streaming=True, extras={}))
    assert created.serial is not None
    return store, rollup, created.serial


async def appends_of(store: MemoryStore) -> list[str]:
    return [str(e.data) for e in await store.read_events(CHANNEL, 0, 1000) if e.type == "append"]


async def test_the_first_append_goes_alone_and_the_burst_after_it_is_one_event() -> None:
    store, rollup, msg = await setup()
    futures = [rollup.submit("a", CHANNEL, msg, str(i)) for i in range(10)]
    results: list[Appended] = await asyncio.gather(*futures)
    assert [r.serial for r in results] == [2] + [3] * 9  # each append acked, serials shared
    assert await appends_of(store) == ["0", "123456789"]
    message = await store.get_message(CHANNEL, msg)
    assert message is not None and message.data == "0123456789"


async def test_an_offending_append_fails_alone_and_spoils_no_merge() -> None:
    store, rollup, msg = await setup(max_stream_bytes=10)
    a1 = rollup.submit("a", CHANNEL, msg, "a1")
    b1 = rollup.submit("b", CHANNEL, msg, "b1")  # not the author
    a2 = rollup.submit("a", CHANNEL, msg, "a2")
    big = rollup.submit("a", CHANNEL, msg, "x" * 7)  # would pass max_stream_bytes
    a3 = rollup.submit("a", CHANNEL, msg, "a3")
    outcomes = await asyncio.gather(a1, b1, a2, big, a3, return_exceptions=True)
    assert isinstance(outcomes[1], Conflict) and isinstance(outcomes[3], TooLarge)
    assert [type(o) for o in (outcomes[0], outcomes[2], outcomes[4])] == [Appended] * 3
    message = await store.get_message(CHANNEL, msg)
    assert message is not None and message.data == "a1a2a3"


async def test_settle_sequences_pending_appends_before_what_follows() -> None:
    store, rollup, msg = await setup(rollup_ms=10_000)  # the window alone would never end
    futures = [rollup.submit("a", CHANNEL, msg, f"{i} ") for i in range(3)]
    await rollup.settle(CHANNEL, msg)
    done = await store.append(event("update", "a", msg_serial=msg, status="complete"))
    rollup.observe(done.event)  # type: ignore[arg-type]
    await asyncio.gather(*futures)
    types = [e.type for e in await store.read_events(CHANNEL, 0, 100)]
    assert types == ["create", "append", "append", "update"]
    with pytest.raises(Conflict):  # known ended here: refused without a store round trip
        await rollup.submit("a", CHANNEL, msg, "late")
    await rollup.aclose()


async def test_a_merge_the_store_refuses_fails_every_append_in_it() -> None:
    store, rollup, msg = await setup()
    first = rollup.submit("a", CHANNEL, msg, "first")
    await first
    pending = [rollup.submit("a", CHANNEL, msg, w) for w in ("x", "y")]
    # Ended behind this rollup's back (as another node would): the store has the last word.
    await store.append(event("update", None, msg_serial=msg, status="failed"))
    outcomes = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(o, Conflict) for o in outcomes)
    message = await store.get_message(CHANNEL, msg)
    assert message is not None and message.data == "first" and message.status == "failed"


async def test_rollup_zero_sequences_each_append() -> None:
    store, rollup, msg = await setup(rollup_ms=0)
    results = await asyncio.gather(*(rollup.submit("a", CHANNEL, msg, str(i)) for i in range(5)))
    assert [r.serial for r in results] == [2, 3, 4, 5, 6]
    assert await appends_of(store) == ["0", "1", "2", "3", "4"]


async def test_an_append_to_a_missing_message_is_404() -> None:
    _, rollup, _ = await setup()
    with pytest.raises(NotFound):
        await rollup.submit("a", CHANNEL, 999, "?")


async def test_sweep_fails_idle_streams_and_ends_ignored_cancels() -> None:
    store, rollup, idle = await setup()
    cancelled = (await store.append(event("create", "a", data="", streaming=True))).serial
    fresh = (await store.append(event("create", "a", data="", streaming=True))).serial
    assert cancelled is not None and fresh is not None
    await store.append(event("cancel", "b", msg_serial=cancelled))
    settings = Settings(store="memory://", stream_idle_timeout_s=30, cancel_grace_s=5)
    sweeper = StreamSweeper(store, settings, "node-1", rollup)
    message = await store.get_message(CHANNEL, cancelled)
    assert message is not None
    # Ten seconds later: past the cancel grace, not past the idle timeout.
    assert await sweeper.sweep(now_ms=message.updated_at + 10_000) == 1
    ended = await store.get_message(CHANNEL, cancelled)
    assert ended is not None and ended.status == "cancelled" and ended.cancelled_by == "b"
    assert (await store.get_message(CHANNEL, idle)).status == "streaming"  # type: ignore[union-attr]
    # A minute later: the idle streams fail as abandoned, by the server.
    assert await sweeper.sweep(now_ms=message.updated_at + 60_000) == 2
    for serial in (idle, fresh):
        failed = await store.get_message(CHANNEL, serial)
        assert failed is not None and failed.status == "failed"
        assert failed.extras == {"failure": "abandoned"}
    last = (await store.read_events(CHANNEL, 0, 100))[-1]
    assert last.type == "update" and last.client_id is None
    assert await sweeper.sweep(now_ms=message.updated_at + 60_000) == 0


async def test_one_sweeper_per_store_holds_the_lease() -> None:
    store, rollup, _ = await setup()
    settings = Settings(store="memory://", stream_idle_timeout_s=1)
    first = StreamSweeper(store, settings, "node-1", rollup)
    second = StreamSweeper(store, settings, "node-2", rollup)
    assert await first.tick() is True
    assert await second.tick() is False  # node-1's lease has not run out
    assert await first.tick() is True  # renewed by its holder
    assert first.lease_s < 5  # a dead holder is replaced within the stream timeout + 5 s


class Reads:
    """A StoreObserver that counts the reads of each kind."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def appended(self, op: str, seconds: float, events: int) -> None:
        pass

    def read(self, op: str, seconds: float) -> None:
        self.counts[op] = self.counts.get(op, 0) + 1


async def test_a_steady_stream_reads_its_message_once_not_after_each_quiet_window() -> None:
    """Tokens 30 ms apart (a model of 33 tokens a second, or a busy server's jitter)
    through a 25 ms window leave windows with nothing in them; the message's state outlives
    them, so the store is not read again for the next token."""
    inner, _, msg = await setup()
    reads = Reads()
    store = MeasuredStore(inner, reads)
    rollup = AppendRollup(store, Settings(store="memory://", rollup_ms=25))
    acks = []
    for i in range(40):  # pipelined, as an agent sends them: no wait for each ok
        acks.append(rollup.submit("a", CHANNEL, msg, f"{i} "))
        await asyncio.sleep(0.03)
    await asyncio.gather(*acks)
    assert reads.counts.get("get_message") == 1
    message = await inner.get_message(CHANNEL, msg)
    assert message is not None and message.data == "".join(f"{i} " for i in range(40))

    await asyncio.sleep(LINGER_S + 0.1)  # quiet for longer: forgotten, read again
    await rollup.submit("a", CHANNEL, msg, "more")
    assert reads.counts["get_message"] == 2
    await rollup.aclose()


async def test_a_stream_created_on_this_node_takes_its_first_append_without_a_store_read() -> None:
    """The first token of an answer is on the path to every reader's first token: the node
    knows the message it just created (author, status, size), so it does not read it back."""
    reads = Reads()
    store = MeasuredStore(MemoryStore(LocalBus(), StoreOptions()), reads)
    node = Node(store, Settings(store="memory://", rollup_ms=25))
    await node.start()
    try:
        alice = Principal("alice", ALL, "key")
        created = await node.publish(
            alice, Publish(channel=CHANNEL, data="", streaming=True, extras={})
        )
        assert isinstance(created.serial, int)
        for word in ("one ", "two"):
            await node.append_to(
                alice, Append(channel=CHANNEL, msg_serial=created.serial, data=word)
            )
        assert reads.counts.get("get_message") is None
        # Still checked as the store would: another client's append is refused.
        with pytest.raises(Conflict, match="not yours"):
            await node.append_to(
                Principal("bob", ALL, "key"),
                Append(channel=CHANNEL, msg_serial=created.serial, data="mine"),
            )
        await node.rollup.aclose()
        message = await store.get_message(CHANNEL, created.serial)
        assert message is not None and message.data == "one two"
    finally:
        await node.stop()
