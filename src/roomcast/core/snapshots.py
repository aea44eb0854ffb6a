"""One snapshot read for the attaches of a channel that a new event has not separated.

When thousands of clients resume at once (a server restart, a network blip), the clients of
one room come back within seconds of each other, from the same serial, and each ``attach``
asks the store for the same snapshot. :class:`SharedSnapshots` lets them share one read.

Why that keeps every attach gap-free: an attach subscribes to the channel's live events
before its snapshot is read, and each event reaches the fan-out only once it is stored. A
snapshot asked for at time *t* therefore holds every event handed to the fan-out before *t*,
and an attach subscribed at *t'* gets every event handed over after *t'*. So a later attach
may take a snapshot asked for earlier if no event of the channel was handed over in between:
the fan-out calls :meth:`SharedSnapshots.forget` for the channel at each hand-off (and when
the channel's log starts over), which ends the sharing. Events it holds twice (in the
snapshot and live) are dropped by serial, as for any attach.

The entries only save reads; they are bounded in count (:data:`MAX_ENTRIES`) and in age
(:data:`SHARE_S`, checked at each read and at the node's periodic tick), the oldest going
first.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from roomcast.backends.base import Snapshot

SHARE_S = 5.0  # an entry older than this is read again
MAX_ENTRIES = 4096  # entries kept at most (each may hold up to a replay page of events)

SnapshotKey = tuple[int | None, int, bool]  # from_serial, rewind, objects


@dataclass(slots=True)
class _Entry:
    expires: float
    read: asyncio.Future[Snapshot]


@dataclass(slots=True)
class SnapshotStats:
    """Counters ``/metrics`` reads: snapshots read from the store, and attaches that shared one."""

    reads: int = 0
    shared: int = 0


class SharedSnapshots:
    """Snapshots by channel and by what was asked (``from_serial``, ``rewind``, objects)."""

    def __init__(self) -> None:
        self.stats = SnapshotStats()
        self._channels: dict[str, dict[SnapshotKey, _Entry]] = {}
        self._order: deque[tuple[str, SnapshotKey, _Entry]] = deque()

    def __len__(self) -> int:
        """Entries still shareable."""
        return sum(len(entries) for entries in self._channels.values())

    def get(
        self, channel: str, key: SnapshotKey, read: Callable[[], Awaitable[Snapshot]]
    ) -> Awaitable[Snapshot]:
        """The snapshot of ``channel`` for ``key``: a read still shareable, or ``read()``.

        The caller must already receive the channel's live events. Cancelling the caller
        does not cancel a read that others share.
        """
        now = time.monotonic()
        entries = self._channels.get(channel)
        entry = entries.get(key) if entries is not None else None
        if entry is not None and entry.expires > now:
            self.stats.shared += 1
            return asyncio.shield(entry.read)
        self.stats.reads += 1
        task = asyncio.ensure_future(read())
        entry = _Entry(now + SHARE_S, task)
        self._channels.setdefault(channel, {})[key] = entry
        self._order.append((channel, key, entry))
        task.add_done_callback(lambda t: self._settled(channel, key, entry))
        self.trim(now)
        return asyncio.shield(task)

    def forget(self, channel: str) -> None:
        """An event of ``channel`` was handed to its subscribers: later attaches read anew."""
        self._channels.pop(channel, None)

    def clear(self) -> None:
        self._channels.clear()
        self._order.clear()

    def _settled(self, channel: str, key: SnapshotKey, entry: _Entry) -> None:
        task = entry.read
        if task.cancelled() or task.exception() is not None:  # retrieved: nobody may wait
            self._drop(channel, key, entry)  # a failed read is not shared: the next one retries

    def trim(self, now: float) -> None:
        """Drop the entries past their age, and the oldest over :data:`MAX_ENTRIES`."""
        order = self._order
        while order and (len(order) > MAX_ENTRIES or order[0][2].expires <= now):
            self._drop(*order.popleft())

    def _drop(self, channel: str, key: SnapshotKey, entry: _Entry) -> None:
        entries = self._channels.get(channel)
        if entries is not None and entries.get(key) is entry:
            del entries[key]
            if not entries:
                del self._channels[channel]


__all__ = ["MAX_ENTRIES", "SHARE_S", "SharedSnapshots", "SnapshotKey", "SnapshotStats"]
