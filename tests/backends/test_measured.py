"""MeasuredStore reports each append and read to its observer (the contract suite checks
that it changes nothing else)."""

from __future__ import annotations

from roomcast.backends import StoreOptions, open_backend
from roomcast.backends.measured import MeasuredStore
from roomcast.protocol.messages import Event


class StoreCalls:
    def __init__(self) -> None:
        self.appends: list[tuple[str, int]] = []
        self.reads: list[str] = []

    def appended(self, op: str, seconds: float, events: int) -> None:
        self.appends.append((op, events))

    def read(self, op: str, seconds: float) -> None:
        self.reads.append(op)


def create(channel: str, data: object) -> Event:
    return Event(channel=channel, serial=0, type="create", client_id="a", timestamp=0, data=data)


async def test_appends_count_stored_events_and_reads_are_named() -> None:
    calls = StoreCalls()
    store = MeasuredStore(open_backend("memory://", StoreOptions()), calls)
    await store.open()
    try:
        await store.append(create("room:a", 1), idempotency_key="k")
        await store.append(create("room:a", 1), idempotency_key="k")  # a duplicate
        await store.append_batch([create("room:a", 2), create("room:a", 3)], [None, None])
        await store.history("room:a", before=None, after=None, limit=10)
        await store.snapshot("room:a", from_serial=0, rewind=0)
        await store.read_events("room:a", 0, 10)
        await store.get_message("room:a", 1)
    finally:
        await store.aclose()
    assert calls.appends == [("append", 1), ("append", 0), ("append_batch", 2)]
    assert calls.reads == ["history", "snapshot", "read_events", "get_message"]
