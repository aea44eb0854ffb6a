"""Per-connection session state, sans-I/O: no clocks, sockets or tasks of its own.

The asyncio layer feeds it events and the current time and acts on what it returns. Keeping
the ordering rules here (attach barrier, dedup by serial, rate limits) makes them testable
with plain synchronous tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


class TokenBucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` saved. ``rate`` 0 = no limit."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._tokens = self.burst
        self._stamp: float | None = None

    def take(self, now: float, amount: float = 1.0) -> bool:
        if self.rate <= 0:
            return True
        if self._stamp is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= amount:
            self._tokens -= amount
            return True
        return False


@dataclass(slots=True)
class Attachment:
    """One attached channel on one connection.

    While ``pending`` (the snapshot is being read) live frames are held back; once the
    ``attached`` reply and the replay are out, :meth:`go_live` releases the held frames whose
    serial is past the snapshot. From then on a frame whose serial was already delivered is
    dropped, so a client never sees a serial twice. Frames without a serial (presence,
    signals) are never dropped.

    ``types``, when set, are the only event types the client asked for (``attach``'s
    ``types``): the others are left out, live and in the replay, so its serials jump.
    """

    channel: str
    state: Literal["pending", "live"] = "pending"
    last_serial: int = 0
    held: list[tuple[int | None, bytes]] = field(default_factory=list)
    types: frozenset[str] | None = None

    def wants(self, event_type: str) -> bool:
        """Whether events of ``event_type`` go to this client."""
        return self.types is None or event_type in self.types

    def offer(self, serial: int | None, frame: bytes) -> bytes | None:
        """A live frame for this channel: the frame to send now, or None."""
        if self.state == "pending":
            self.held.append((serial, frame))
            return None
        if serial is not None:
            if serial <= self.last_serial:
                return None
            self.last_serial = serial
        return frame

    def go_live(self, snapshot_serial: int) -> list[bytes]:
        """The snapshot at ``snapshot_serial`` was sent: what of the held frames follows it."""
        self.state = "live"
        self.last_serial = max(self.last_serial, snapshot_serial)
        out: list[bytes] = []
        for serial, frame in self.held:
            if serial is None:
                out.append(frame)
            elif serial > self.last_serial:
                self.last_serial = serial
                out.append(frame)
        self.held.clear()
        return out

    @property
    def held_count(self) -> int:
        return len(self.held)


@dataclass(slots=True)
class Session:
    """What the server knows about one connection."""

    client_id: str
    connection_id: str
    attachments: dict[str, Attachment] = field(default_factory=dict)
    presence: dict[str, Any] = field(default_factory=dict)  # channel → data entered with

    def attach(self, channel: str) -> Attachment:
        """Start (or restart) an attachment; a re-attach replaces the old one."""
        attachment = Attachment(channel)
        self.attachments[channel] = attachment
        return attachment

    def detach(self, channel: str) -> Attachment | None:
        return self.attachments.pop(channel, None)
