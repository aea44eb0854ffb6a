"""MeasuredStore reports each append and read to its observer (the contract suite checks
that it changes nothing else), whether it times the calls itself (memory) or the store
reports its own appends (the queued stores: SQLite, Redis)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_contract import event

from conftest import REDIS_URL, drop_redis_prefix, require_redis
from roomcast.backends import StoreOptions, open_backend
from roomcast.backends.measured import MeasuredStore
from roomcast.protocol.errors import Conflict
from roomcast.protocol.messages import Event


class StoreCalls:
    def __init__(self) -> None:
        self.appends: list[tuple[str, int]] = []
        self.seconds: list[float] = []
        self.reads: list[str] = []

    def appended(self, op: str, seconds: float, events: int) -> None:
        self.appends.append((op, events))
        self.seconds.append(seconds)

    def read(self, op: str, seconds: float) -> None:
        self.reads.append(op)


def create(channel: str, data: object) -> Event:
    return Event(channel=channel, serial=0, type="create", client_id="a", timestamp=0, data=data)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'measured.db'}"
    else:
        require_redis()
        prefix = f"test-{uuid.uuid4().hex}"
        yield f"{REDIS_URL}?prefix={prefix}"
        drop_redis_prefix(prefix)


async def test_appends_count_stored_events_and_reads_are_named(store_url: str) -> None:
    calls = StoreCalls()
    store = MeasuredStore(open_backend(store_url, StoreOptions()), calls)
    await store.open()
    try:
        await store.append(create("room:a", 1), idempotency_key="k")
        await store.append(create("room:a", 1), idempotency_key="k")  # a duplicate
        await store.append_batch([create("room:a", 2), create("room:a", 3)], [None, None])
        await store.submit(create("room:a", 4))
        await store.append(event("update", 1, channel="room:a", status="complete"))  # no-op
        with pytest.raises(Conflict):  # a refused write is reported too, storing nothing
            await store.submit(event("append", 1, channel="room:a", data="more"))
        await store.history("room:a", before=None, after=None, limit=10)
        await store.snapshot("room:a", from_serial=0, rewind=0)
        await store.read_events("room:a", 0, 10)
        await store.get_message("room:a", 1)
        await asyncio.sleep(0)  # a write answered at once (memory) is reported a turn later
    finally:
        await store.aclose()
    # In any order: a write answered at once is reported after the writes that follow it.
    assert sorted(calls.appends) == sorted(
        [
            ("append", 1),
            ("append", 0),
            ("append_batch", 2),
            ("append", 1),
            ("append", 0),
            ("append", 0),
        ]
    )
    assert calls.reads == ["history", "snapshot", "read_events", "get_message"]
    assert all(seconds >= 0 for seconds in calls.seconds)
