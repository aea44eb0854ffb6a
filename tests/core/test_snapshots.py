"""Attaches share one snapshot read until an event of the channel separates them, and no
attach misses an event for it."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from inproc_node import RecordingTransport, connect, running_node, settle
from roomcast.backends.base import Snapshot
from roomcast.core import snapshots
from roomcast.core.authz import Principal
from roomcast.core.connection import Connection
from roomcast.core.snapshots import SharedSnapshots
from roomcast.protocol.capabilities import ALL
from roomcast.protocol.messages import Publish

CHANNEL = "room:snapshots"
ALICE = Principal("alice", ALL, "key")


class Reads:
    """A store read by hand: each call counts and waits until ``release``."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.error: Exception | None = None

    async def __call__(self) -> Snapshot:
        self.calls += 1
        serial = self.calls
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return Snapshot("e1", serial, 1, [], [])


async def test_attaches_asking_the_same_share_one_read() -> None:
    shared, reads = SharedSnapshots(), Reads()
    waiting = [shared.get(CHANNEL, (0, 0, True), reads) for _ in range(3)]
    reads.release.set()
    got = await asyncio.gather(*waiting)
    assert reads.calls == 1 and all(snap is got[0] for snap in got)
    after = await shared.get(CHANNEL, (0, 0, True), reads)  # done, and still shareable
    assert after is got[0] and (shared.stats.reads, shared.stats.shared) == (1, 3)


async def test_another_question_or_channel_is_another_read() -> None:
    shared, reads = SharedSnapshots(), Reads()
    reads.release.set()
    await shared.get(CHANNEL, (0, 0, True), reads)
    await shared.get(CHANNEL, (5, 0, True), reads)
    await shared.get(CHANNEL, (0, 10, True), reads)
    await shared.get(CHANNEL, (0, 0, False), reads)
    await shared.get("room:other", (0, 0, True), reads)
    assert reads.calls == 5


async def test_a_hand_off_ends_the_sharing() -> None:
    shared, reads = SharedSnapshots(), Reads()
    reads.release.set()
    first = await shared.get(CHANNEL, (0, 0, True), reads)
    shared.forget(CHANNEL)
    second = await shared.get(CHANNEL, (0, 0, True), reads)
    assert (first.serial, second.serial) == (1, 2)


async def test_a_failed_read_fails_its_waiters_and_is_not_shared() -> None:
    shared, reads = SharedSnapshots(), Reads()
    reads.error = OSError("disk gone")
    waiting = [shared.get(CHANNEL, (0, 0, True), reads) for _ in range(2)]
    reads.release.set()
    for result in await asyncio.gather(*waiting, return_exceptions=True):
        assert isinstance(result, OSError)
    reads.error = None
    snap = await shared.get(CHANNEL, (0, 0, True), reads)
    assert snap.serial == 2 and len(shared) == 1


async def test_a_cancelled_attach_does_not_cancel_the_read_others_wait_for() -> None:
    shared, reads = SharedSnapshots(), Reads()
    first = asyncio.ensure_future(shared.get(CHANNEL, (0, 0, True), reads))
    second = shared.get(CHANNEL, (0, 0, True), reads)
    await asyncio.sleep(0)
    first.cancel()
    reads.release.set()
    assert (await second).serial == 1
    assert first.cancelled()


async def test_entries_are_bounded_in_age_and_count(monkeypatch: pytest.MonkeyPatch) -> None:
    shared, reads = SharedSnapshots(), Reads()
    reads.release.set()
    monkeypatch.setattr(snapshots, "MAX_ENTRIES", 2)
    for channel in ("room:a", "room:b", "room:c"):
        await shared.get(channel, (0, 0, True), reads)
    assert len(shared) == 2
    await shared.get("room:a", (0, 0, True), reads)  # the oldest went first
    assert reads.calls == 4
    shared.trim(float("inf"))  # all past their age
    assert len(shared) == 0
    monkeypatch.setattr(snapshots, "SHARE_S", 0.0)
    await shared.get("room:a", (0, 0, True), reads)
    await shared.get("room:a", (0, 0, True), reads)
    assert reads.calls == 6


def serials(transport: RecordingTransport) -> list[int]:
    return [m["serial"] for m in transport.messages() if m["action"] == "event"]


async def attach(conn: Connection, from_serial: int) -> None:
    frame = {"action": "attach", "channel": CHANNEL, "from_serial": from_serial, "ref": 1}
    await conn.receive(json.dumps(frame), is_text=True)
    await settle()


async def test_idle_room_resumes_read_the_snapshot_once() -> None:
    async with running_node() as node:
        for i in range(3):
            await node.publish(ALICE, Publish(channel=CHANNEL, data=i))
        transports = [RecordingTransport() for _ in range(10)]
        for n, transport in enumerate(transports):
            await attach(await connect(node, f"c{n}", transport), 1)
        stats = node.fanout.snapshots.stats
        assert (stats.reads, stats.shared) == (1, 9)
        assert all(serials(t) == [2, 3] for t in transports)


async def test_an_attach_after_an_event_reads_again_and_misses_nothing() -> None:
    async with running_node() as node:
        await node.publish(ALICE, Publish(channel=CHANNEL, data="before"))
        first, second = RecordingTransport(), RecordingTransport()
        await attach(await connect(node, "first", first), 0)
        await node.publish(ALICE, Publish(channel=CHANNEL, data="between"))
        await settle()
        await attach(await connect(node, "second", second), 0)
        assert node.fanout.snapshots.stats.reads == 2
        assert serials(first) == serials(second) == [1, 2]


async def test_attaches_interleaved_with_publishes_each_see_every_event_once() -> None:
    rng = random.Random(19)
    async with running_node() as node:
        transports: list[RecordingTransport] = []
        published = 0
        for n in range(40):
            transport = RecordingTransport()
            transports.append(transport)
            conn = await connect(node, f"c{n}", transport)
            frame = {"action": "attach", "channel": CHANNEL, "from_serial": 0, "ref": 1}
            await conn.receive(json.dumps(frame), is_text=True)
            for _ in range(rng.randrange(3)):  # before, while or after that attach's read
                await asyncio.sleep(0)
                await node.publish(ALICE, Publish(channel=CHANNEL, data=published))
                published += 1
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)
        await node.publish(ALICE, Publish(channel=CHANNEL, data="last"))
        await settle(100)
        everything = list(range(1, published + 2))
        for transport in transports:
            assert serials(transport) == everything
        stats = node.fanout.snapshots.stats
        assert stats.shared > 0 and stats.reads > 1  # both paths were taken
