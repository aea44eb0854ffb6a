"""``channel.active`` hints: how agents find the rooms that need them without attaching to
every room they might serve (docs/protocol.md §1, docs/agents.md "Many rooms").

When a channel gets a message or a live-object change, or a person (a connection without an
API key) enters its presence, the node sends the signal ``channel.active`` on
``meta:channels`` with ``{"channel": NAME, "serial": S}``: the channel's latest serial
before the activity (the event's serial - 1, or for an enter the latest). An agent that
attaches from ``S`` misses nothing of it, however late its attach arrives.

Each node sends it at most once per channel every ``activity_hint_s`` seconds, so a busy
room costs one signal a minute, not one per message. An agent that keeps a room attached
while it sees any hint or event for it, and detaches only after a quiet period longer than
``activity_hint_s``, therefore never misses the hint that should bring it back: by then
every node's window for that room has passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from roomcast.protocol.errors import Unavailable
from roomcast.protocol.messages import SignalEvent

log = logging.getLogger("roomcast.node")

META_CHANNELS = "meta:channels"
CHANNEL_ACTIVE = "channel.active"
_PRUNE_AT = 10_000  # channels remembered before the old ones are dropped


class ActivityHints:
    """Sends ``channel.active`` at most once per channel every ``window_s`` seconds."""

    def __init__(
        self,
        publish: Callable[[SignalEvent], Awaitable[None]],
        latest: Callable[[str], Awaitable[int]],
        spawn: Callable[[Awaitable[Any]], Any],
        window_s: float,
    ) -> None:
        self._publish = publish
        self._latest = latest
        self._spawn = spawn
        self.window_s = window_s
        self._sent: dict[str, float] = {}  # channel → when its last hint went out

    def hint(self, channel: str, serial: int | None = None) -> None:
        """``channel`` is active from after ``serial`` (None: from its latest serial, read
        when the hint goes out): hint it unless this node did within the window."""
        if channel == META_CHANNELS:
            return
        now = time.monotonic()
        last = self._sent.get(channel)
        if last is not None and now - last < self.window_s:
            return
        if len(self._sent) >= _PRUNE_AT:
            self._sent = {c: t for c, t in self._sent.items() if now - t < self.window_s}
        self._sent[channel] = now
        self._spawn(self._send(channel, serial))

    async def _send(self, channel: str, serial: int | None) -> None:
        try:
            if serial is None:
                serial = await self._latest(channel)
            data = {"channel": channel, "serial": serial}
            signal = SignalEvent(
                channel=META_CHANNELS, client_id=None, name=CHANNEL_ACTIVE, data=data
            )
            await self._publish(signal)
        except Unavailable as exc:  # only a hint: the agents' next one comes with the store
            log.debug("could not hint that %s is active: %s", channel, exc)


__all__ = ["CHANNEL_ACTIVE", "META_CHANNELS", "ActivityHints"]
