"""The two contracts every backend implements: :class:`Store` (durable) and :class:`Bus`
(cross-node fan-out).

The Store is shaped so that a networked backend can do each write as one atomic step:
sequence the event (next serial, idempotency check), apply it to the message's rolled-up
state, and hand it to the Bus. Everything another node may need lives here (log, messages,
presence, claims, counters, resume sessions, the streaming index, channel listing), so a
client can reconnect to any node and resume.

A single parametrized contract suite (``tests/backends/test_contract.py``) runs against every
implementation.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import msgspec

from roomcast.protocol.messages import (
    Event,
    Message,
    ObjectsSnapshot,
    ObjectState,
    PresenceEvent,
    PresenceMember,
    SignalEvent,
)

REPLAY_PAGE = 5000
"""Events read at once when a client catches up."""

AppendReport = Callable[[str, float, int], None]
"""Told of one answered append, on the event loop: its kind (``append`` or
``append_batch``), the seconds from its call to its answer, and the events it stored (0 for
a no-op, a repeated idempotency key or a failure)."""


# gc=False: made per write, and it can hold no reference cycle, so the garbage collector
# need not track it (fewer objects for it to walk while publishes are in flight).
class Appended(msgspec.Struct, frozen=True, gc=False):
    """The result of one append: the stored event, or None for a no-op.

    ``serial`` is the event's serial; for a repeated idempotency key it is the first
    publish's serial and ``duplicate`` is True (nothing was stored).
    """

    serial: int | None
    event: Event | None = None
    duplicate: bool = False


class Snapshot(msgspec.Struct, frozen=True):
    """A consistent read of one channel as of ``serial`` (docs/protocol.md §2 ``attached``).

    ``first_serial`` is the oldest serial still in the log (``serial + 1`` when the log is
    empty). ``events`` holds the first events after ``from_serial`` (up to ``serial``) when
    the log still has them all, else None. ``messages`` holds the last ``rewind`` messages.
    ``objects`` holds the live objects as of ``serial`` when they were asked for.
    """

    epoch: str
    serial: int
    first_serial: int
    messages: list[Message]
    events: list[Event] | None
    objects: ObjectsSnapshot | None = None


class StoreOptions(msgspec.Struct, frozen=True):
    """Settings a store needs to apply events (they come from the server's settings)."""

    dedup_window_s: float = 86400.0
    max_message_bytes: int = 64 * 1024  # a message after a change (``rollup.check_size``)
    max_stream_bytes: int = 1024 * 1024
    max_objects_bytes: int = 256 * 1024


class ChannelInfo(msgspec.Struct, frozen=True):
    channel: str
    epoch: str
    serial: int
    updated_at: int


TAKEN_TTL_S = 600.0  # how long a taken resume key stays marked taken
DEFAULT_NODE_TTL_S = 15.0  # a node's liveness, until its first heartbeat says how long


class ResumeSession(msgspec.Struct, frozen=True):
    """What a resume key restores: the connection id and the presence it held."""

    client_id: str
    connection_id: str
    presence: dict[str, Any]  # channel → presence data
    expires_at: float


class BusSink(Protocol):
    """What the Bus delivers to on this node (the core's fan-out), and asks it."""

    def on_events(self, channel: str, events: Sequence[Event]) -> None:
        """``channel``'s events, in serial order, each once."""
        ...

    def on_presence(self, event: PresenceEvent) -> None: ...

    def on_signal(self, event: SignalEvent) -> None: ...

    def on_epoch(self, channel: str, epoch: str) -> None:
        """``channel``'s log started over under ``epoch`` (a shared store lost its data)."""
        ...

    def occupancy(self, channel: str) -> int:
        """The subscribers of ``channel`` on this node (the Bus keeps a channel while any)."""
        ...


class Bus(ABC):
    """Fans out what one node sequenced (events) or saw (presence, signals) to every node.

    Events reach the sink in serial order per channel. On one node, this is a function call.
    """

    sink: BusSink | None = None

    def bind(self, sink: BusSink) -> None:
        self.sink = sink

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect; the default has nothing to connect."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Disconnect; the default has nothing to release."""

    async def ping(self) -> None:  # noqa: B027 - optional hook
        """Raise if the bus cannot deliver (``/readyz``); the default always can."""

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start receiving ``channel``'s traffic on this node."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``'s traffic on this node."""

    @abstractmethod
    async def publish_presence(self, event: PresenceEvent) -> None: ...

    @abstractmethod
    async def publish_signal(self, event: SignalEvent) -> None: ...


class Store(ABC):
    """The durable part of a backend. Every method is safe to call concurrently.

    Appends are group-committed: callers may have many in flight, and each returns once its
    event is durable. Events are handed to the Bus in serial order after they are durable.
    """

    bus: Bus

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def aclose(self) -> None:
        """Flush every accepted write, then release resources."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise if the store cannot serve requests (``/readyz``)."""

    # ----------------------------------------------------------------- the log

    @abstractmethod
    async def append(self, event: Event, *, idempotency_key: str | None = None) -> Appended:
        """Sequence ``event`` on its channel (its ``serial`` and ``timestamp`` are assigned
        here) and apply it to the message it refers to, atomically.

        Raises NotFound / Conflict / TooLarge when it cannot apply (see ``rollup.admit``).
        """

    def submit(self, event: Event, *, idempotency_key: str | None = None) -> Awaitable[Appended]:
        """:meth:`append` without a coroutine: the write is queued before this returns, and
        the awaitable resolves as ``append`` would. Pipelined publishes use it, so that each
        one costs no task of its own; a store with a write queue overrides it."""
        return asyncio.ensure_future(self.append(event, idempotency_key=idempotency_key))

    def report_appends(self, report: AppendReport) -> bool:
        """Call ``report`` for every append, batch and submit as it is answered, and return
        True; a store that cannot returns False (the default), and its caller times the
        calls itself. A store with a write queue reports from where it answers a whole
        commit's writes at once, which costs no callback per write."""
        return False

    @abstractmethod
    async def append_batch(
        self, events: Sequence[Event], keys: Sequence[str | None]
    ) -> list[Appended]:
        """Append several events to one channel, all or nothing."""

    @abstractmethod
    async def snapshot(
        self,
        channel: str,
        *,
        from_serial: int | None,
        rewind: int,
        replay_limit: int = REPLAY_PAGE,
        objects: bool = False,
    ) -> Snapshot:
        """A consistent read for ``attach``; fixes the channel's epoch if it has none yet.

        With ``objects``, the snapshot also holds the live objects as of its serial.

        ``events`` holds at most ``replay_limit`` events; the caller pages the rest with
        :meth:`read_events`, so a client far behind never loads the whole log at once.
        """

    @abstractmethod
    async def read_events(self, channel: str, after: int, limit: int) -> list[Event]:
        """Events with serial > ``after``, oldest first."""

    @abstractmethod
    async def history(
        self, channel: str, *, before: int | None, after: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        """Messages just before ``before`` (default: the newest) or just after ``after``,
        oldest first, and whether more lie beyond."""

    @abstractmethod
    async def get_message(self, channel: str, msg_serial: int) -> Message | None: ...

    @abstractmethod
    async def get_object(self, channel: str, object_id: str) -> ObjectState | None:
        """One live object's current state; None if no operation made it (the root map
        is None until an operation touches it)."""

    @abstractmethod
    async def objects(self, channel: str) -> ObjectsSnapshot:
        """Every live object of ``channel`` (the root map included), as of its latest serial."""

    @abstractmethod
    async def channel_info(self, channel: str) -> ChannelInfo | None:
        """The channel's epoch and latest serial; None if it has none."""

    @abstractmethod
    async def list_channels(self, prefix: str, limit: int, after: str = "") -> list[ChannelInfo]:
        """Channels with at least one event whose name starts with ``prefix``, by name;
        only those after ``after`` (the last name of the previous page) when it is set."""

    @abstractmethod
    async def streaming_messages(self, idle_since_ms: int, limit: int) -> list[tuple[str, Message]]:
        """Messages still ``streaming`` whose last event is older than ``idle_since_ms``."""

    @abstractmethod
    async def purge(self, now_ms: int, retention_ms: int) -> int:
        """Drop expired idempotency keys and, if ``retention_ms`` > 0, events and messages
        older than it; returns how many events went."""

    # ----------------------------------------------------------------- ephemeral state

    @abstractmethod
    async def presence_set(self, channel: str, member: PresenceMember, node_id: str) -> None:
        """Enter or update ``member``, held by ``node_id`` (which it registers as alive, for
        its ``node_heartbeat`` ttl, if the store does not know it: a node that dies before
        its next heartbeat still has its members reaped)."""

    @abstractmethod
    async def presence_remove(
        self, channel: str, client_id: str, connection_id: str, *, holder: str | None = None
    ) -> bool:
        """Remove a member; False if it was not there. With ``holder``, only if that node
        still holds it (the member did not move to another node meanwhile)."""

    @abstractmethod
    async def presence_adopt(
        self, channel: str, client_id: str, connection_id: str, node_id: str
    ) -> PresenceMember | None:
        """Make ``node_id`` the holder of a member that is present (a connection resumed on
        that node), atomically against ``presence_remove(holder=...)``; None if absent."""

    @abstractmethod
    async def presence_members(self, channel: str) -> list[PresenceMember]: ...

    @abstractmethod
    async def node_heartbeat(self, node_id: str, ttl_s: float) -> None:
        """Mark ``node_id`` alive for ``ttl_s`` seconds."""

    @abstractmethod
    async def lifetime(self) -> str:
        """An id of the store's current data, the same until its ephemeral state is lost (a
        Redis restarted without persistence, or flushed), then a new one. A node that sees
        it change puts back what it holds: its presence members and resume sessions."""

    @abstractmethod
    async def reap_dead_nodes(self) -> list[tuple[str, PresenceMember]]:
        """Remove and return the presence members of nodes whose heartbeat lapsed."""

    @abstractmethod
    async def claim(self, key: str, owner: str, ttl_s: float) -> bool:
        """True for exactly one owner per key until ``ttl_s`` passes."""

    @abstractmethod
    async def incr_counter(self, key: str, amount: float, ttl_s: float) -> float:
        """Add to a counter that expires ``ttl_s`` after it was created; returns the total."""

    @abstractmethod
    async def change_set(self, key: str, member: str, *, present: bool, ttl_s: float) -> None:
        """Add ``member`` to the set at ``key`` (``present``) or remove it, as one step:
        changes made at the same moment, from any node, all hold. The set expires ``ttl_s``
        after its latest change."""

    @abstractmethod
    async def set_members(self, key: str) -> set[str]:
        """The members of the set at ``key`` (empty when it has none or expired)."""

    @abstractmethod
    async def save_session(self, key: str, session: ResumeSession) -> None:
        """Store a session (replacing whatever the key held), until ``expires_at``."""

    @abstractmethod
    async def keep_session(self, key: str, session: ResumeSession) -> bool:
        """Store a session unless it was taken: False (and nothing written) when
        :meth:`take_session` took the key since it was saved. The node that holds a
        connection keeps its session current with this; False means the client resumed
        elsewhere."""

    @abstractmethod
    async def take_session(self, key: str) -> ResumeSession | None:
        """Return an unexpired session and mark the key taken (a resume key works once;
        :meth:`keep_session` on it then fails for :data:`TAKEN_TTL_S`)."""
