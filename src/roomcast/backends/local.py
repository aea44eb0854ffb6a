"""In-process parts shared by the single-process backends (``memory://`` and ``sqlite://``).

:class:`LocalBus` is a function call. :class:`LocalEphemeralState` keeps presence, claims,
counters and resume sessions in this process's memory: with one server process per store
(which the SQLite backend enforces with a lock file) that is exactly the set of nodes.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

from roomcast.protocol.messages import Event, PresenceEvent, PresenceMember, SignalEvent

from .base import DEFAULT_NODE_TTL_S, TAKEN_TTL_S, Bus, ResumeSession, StoreOptions


class LocalBus(Bus):
    """Delivers to this node's sink at once; there is no other node."""

    def emit(self, channel: str, events: Sequence[Event]) -> None:
        if self.sink is not None and events:
            self.sink.on_events(channel, events)

    async def subscribe(self, channel: str) -> None:
        return None

    async def unsubscribe(self, channel: str) -> None:
        return None

    async def publish_presence(self, event: PresenceEvent) -> None:
        if self.sink is not None:
            self.sink.on_presence(event)

    async def publish_signal(self, event: SignalEvent) -> None:
        if self.sink is not None:
            self.sink.on_signal(event)


class LocalEphemeralState:
    """Presence, node liveness, claims, counters, sets and resume sessions, in memory."""

    options: StoreOptions

    def __init__(self) -> None:
        # channel → (client_id, connection_id) → (member, node_id)
        self._presence: dict[str, dict[tuple[str, str], tuple[PresenceMember, str]]] = {}
        self._nodes: dict[str, float] = {}
        self._claims: dict[str, tuple[str, float]] = {}
        self._counters: dict[str, tuple[float, float]] = {}
        self._sets: dict[str, tuple[set[str], float]] = {}  # key → (members, expiry)
        self._live_sets = 0  # sets found unexpired at the last sweep
        self._sessions: dict[str, ResumeSession] = {}
        self._live_sessions = 0  # sessions found unexpired at the last sweep
        self._ttls: dict[str, float] = {}  # node → the ttl of its heartbeats
        self._lifetime = new_epoch()

    async def presence_set(self, channel: str, member: PresenceMember, node_id: str) -> None:
        members = self._presence.setdefault(channel, {})
        members[(member.client_id, member.connection_id)] = (member, node_id)
        if node_id not in self._nodes:
            self._nodes[node_id] = time.monotonic() + self._ttls.get(node_id, DEFAULT_NODE_TTL_S)

    async def presence_remove(
        self, channel: str, client_id: str, connection_id: str, *, holder: str | None = None
    ) -> bool:
        members = self._presence.get(channel)
        found = members.get((client_id, connection_id)) if members else None
        if members is None or found is None or holder not in (None, found[1]):
            return False
        del members[(client_id, connection_id)]
        if not members:
            del self._presence[channel]
        return True

    async def presence_adopt(
        self, channel: str, client_id: str, connection_id: str, node_id: str
    ) -> PresenceMember | None:
        members = self._presence.get(channel)
        found = members.get((client_id, connection_id)) if members else None
        if members is None or found is None:
            return None
        members[(client_id, connection_id)] = (found[0], node_id)
        return found[0]

    async def presence_members(self, channel: str) -> list[PresenceMember]:
        return [member for member, _ in self._presence.get(channel, {}).values()]

    async def node_heartbeat(self, node_id: str, ttl_s: float) -> None:
        self._nodes[node_id] = time.monotonic() + ttl_s
        self._ttls[node_id] = ttl_s

    async def lifetime(self) -> str:
        return self._lifetime  # this process's memory: lost only with the process

    async def reap_dead_nodes(self) -> list[tuple[str, PresenceMember]]:
        now = time.monotonic()
        dead = {node for node, until in self._nodes.items() if until < now}
        reaped: list[tuple[str, PresenceMember]] = []
        for channel, members in list(self._presence.items()):
            for key, (member, node_id) in list(members.items()):
                if node_id in dead:
                    del members[key]
                    reaped.append((channel, member))
            if not members:
                del self._presence[channel]
        for node in dead:
            del self._nodes[node]
        return reaped

    async def claim(self, key: str, owner: str, ttl_s: float) -> bool:
        now = time.monotonic()
        held = self._claims.get(key)
        if held is not None and held[1] > now and held[0] != owner:
            return False
        self._claims[key] = (owner, now + ttl_s)
        self._expire_claims(now)
        return True

    def _expire_claims(self, now: float) -> None:
        if len(self._claims) > 1024:
            for key in [k for k, (_, until) in self._claims.items() if until <= now]:
                del self._claims[key]

    async def change_set(self, key: str, member: str, *, present: bool, ttl_s: float) -> None:
        now = time.monotonic()
        members, until = self._sets.get(key, (set(), now))
        if until <= now:
            members = set()
        (members.add if present else members.discard)(member)
        if len(self._sets) > 1024 + 2 * self._live_sets:
            for old in [k for k, (_, until) in self._sets.items() if until <= now]:
                del self._sets[old]
            self._live_sets = len(self._sets)
        if members:
            self._sets[key] = (members, now + ttl_s)
        else:
            self._sets.pop(key, None)

    async def set_members(self, key: str) -> set[str]:
        members, until = self._sets.get(key, (set(), 0.0))
        return set(members) if until > time.monotonic() else set()

    async def incr_counter(self, key: str, amount: float, ttl_s: float) -> float:
        now = time.monotonic()
        value, until = self._counters.get(key, (0.0, now + ttl_s))
        if until <= now:
            value, until = 0.0, now + ttl_s
        value += amount
        self._counters[key] = (value, until)
        return value

    async def save_session(self, key: str, session: ResumeSession) -> None:
        now = time.time()
        if len(self._sessions) > 1024 + 2 * self._live_sessions:
            for old in [k for k, s in self._sessions.items() if s.expires_at <= now]:
                del self._sessions[old]
            self._live_sessions = len(self._sessions)
        self._sessions[key] = session

    async def keep_session(self, key: str, session: ResumeSession) -> bool:
        held = self._sessions.get(key)
        if held is not None and held.client_id == "" and held.expires_at > time.time():
            return False  # taken
        await self.save_session(key, session)
        return True

    async def take_session(self, key: str) -> ResumeSession | None:
        now = time.time()
        session = self._sessions.get(key)
        if session is None or session.client_id == "" or session.expires_at <= now:
            return None
        self._sessions[key] = ResumeSession("", "", {}, now + TAKEN_TTL_S)  # the taken mark
        return session


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_epoch() -> str:
    """A fresh epoch name: random, so a reset log can never reuse an old one."""
    import secrets

    return secrets.token_hex(8)


def channel_epoch(seed: str, channel: str) -> str:
    """The epoch of ``channel``'s log in a store whose data has the random ``seed``.

    A channel with no events stores nothing, not even its epoch: a read reports this one,
    and the channel's first event fixes it, so a client that attached before that event
    resumes without a ``discontinuity``. The seed is made with the store's data and lost
    with it, so a log that starts over gets a new epoch. (The Redis scripts compute the same:
    the first 16 hex digits of the SHA-1 of seed, newline, channel.)
    """
    return hashlib.sha1(f"{seed}\n{channel}".encode()).hexdigest()[:16]


__all__ = ["LocalBus", "LocalEphemeralState", "channel_epoch", "new_epoch", "now_ms"]
