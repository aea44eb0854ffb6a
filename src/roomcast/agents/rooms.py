"""The rooms of one agent: found without polling, attached while active, detached when idle.

An agent's ``rooms`` patterns may match thousands of rooms, most of them quiet at any
moment. So an agent attaches a room only while it has something to do there (docs/agents.md
"Many rooms"):

- **At start** it lists the matching rooms (``GET /v1/channels``, page by page) and attaches
  those with a recent event or somebody attached, from a little before their latest serial,
  so a trigger posted while it started is not missed.
- **Then** it hears of rooms on ``meta:channels``: a room's first message
  (``channel.created``), the first person in an empty room (``channel.occupied``), and the
  server's ``channel.active`` hint (a message, a live-object change or a person entering,
  sent at most once per room every ``activity_hint_s`` by each node). It attaches such a
  room from the serial it saw last there (or from just before the hinted event), so every
  event since is replayed and nothing is missed.
- **Idle rooms** are detached: after ``idle_detach_s`` without an event or a hint, with no
  answer running and nobody but agents present, the agent leaves the room's presence and
  detaches. It waits at least twice the server's ``activity_hint_s`` (from ``connected``),
  so every node's hint window for that room has passed and the room's next activity is
  hinted again.

The server's ``agent.regenerate`` signal comes on ``meta:channels`` too: a room that is not
attached is attached before the message is answered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from msgspec import UNSET

from roomcast.agents.config import AgentConfig
from roomcast.client import Client, ClientClosed, Discontinuity, Event, Message
from roomcast.client.rest import list_channels
from roomcast.protocol.answering import REGENERATE, REGENERATE_KEY
from roomcast.protocol.errors import RoomcastError
from roomcast.protocol.messages import EVENT_TYPES, SignalEvent
from roomcast.protocol.patterns import pattern_matches

from .recent import KEPT_MESSAGES, RecentMessages
from .room import Room
from .triggers import RateWindow

log = logging.getLogger("roomcast.agents")

META_CHANNELS = "meta:channels"
CHANNEL_OCCUPIED = "channel.occupied"  # somebody entered a channel where nobody was
CHANNEL_ACTIVE = "channel.active"  # the server's hint: a channel has activity
STARTUP_LOOKBACK = 200  # events re-read per room at start, for triggers posted just before
LIST_PAGE = 1000  # channels per GET /v1/channels
STARTUP_ATTACHES = 50  # rooms attaching at once at start
MAX_SWEEP_S = 30.0  # idle rooms are looked for at least this often
# An agent reads whole messages (a streamed one once its update ends it), never the
# fragments: leaving them out spares the server a send and the agent a decode per fragment.
WATCHED_TYPES = EVENT_TYPES - {"append"}

EventHandler = Callable[[Room, Event], None]
ReadMessage = Callable[[str, int], Awaitable[Message | None]]  # channel, msg_serial
RegenerateHandler = Callable[[Room, int, str], None]
Spawn = Callable[..., "asyncio.Task[Any]"]


class AgentRooms:
    """The rooms one agent is attached to, and how it finds, attaches and leaves them."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        on_event: EventHandler,
        on_regenerate: RegenerateHandler,
        spawn: Spawn,
        read: ReadMessage,
    ) -> None:
        self.config = config
        self.name = config.name
        self.rooms: dict[str, Room] = {}
        self.idle_s = config.idle_detach_s
        self.client: Client | None = None
        self.stopping = False
        self._on_event = on_event
        self._on_regenerate = on_regenerate
        self._spawn = spawn
        self._read = read
        self._seen: dict[str, int] = {}  # the last serial of each room detached while idle
        self.starting = True  # until the rooms listed at start are attached

    # ------------------------------------------------------------------ finding rooms

    async def start(self, client: Client, server: str, key: str | None) -> None:
        """Listen on ``meta:channels``, attach the rooms active now, and start the sweep
        that detaches idle ones."""
        self.client = client
        hint_s = client.connected.limits.get("activity_hint_s") if client.connected else None
        if isinstance(hint_s, int | float):
            self.idle_s = max(self.idle_s, 2 * float(hint_s))
        meta = client.channels.get(META_CHANNELS)
        meta.on_signal(self._on_meta_signal)
        await meta.subscribe(self._on_meta_event)
        listed = 0
        recent_ms = (time.time() - self.idle_s) * 1000
        active: dict[str, int] = {}
        for pattern in self.config.rooms:
            async for summary in _matching(server, pattern, key):
                listed += 1
                if summary.updated_at >= recent_ms or summary.occupancy > 0:
                    active[summary.channel] = max(0, summary.serial - STARTUP_LOOKBACK)
        slots = asyncio.Semaphore(STARTUP_ATTACHES)

        async def attach(name: str, from_serial: int) -> None:
            async with slots:
                await self.watch(name, from_serial)

        await asyncio.gather(*(attach(name, serial) for name, serial in active.items()))
        self.starting = False
        log.info(
            "agent %s attached %d of its %d rooms; the others attach when they are active",
            self.name,
            len(active),
            listed,
        )
        self._spawn(self._sweep())

    def serves(self, channel: str) -> bool:
        return any(pattern_matches(p, channel) for p in self.config.rooms)

    def _on_meta_event(self, event: Event) -> None:
        """A channel's first event: ``channel.created``."""
        if event.type == "create" and event.name == "channel.created":
            self._wake(event.data, 0)

    def _on_meta_signal(self, signal: SignalEvent) -> None:
        """The server's signals (never a client's: those carry a client_id)."""
        if signal.client_id is not None or self.stopping or not isinstance(signal.data, dict):
            return
        data, serial = signal.data, signal.data.get("serial")
        if signal.name in (CHANNEL_OCCUPIED, CHANNEL_ACTIVE):
            # The latest serial before the activity: attaching from it misses none of it.
            self._wake(data, serial if isinstance(serial, int) and serial >= 0 else None)
        elif signal.name == REGENERATE and self.name in (data.get("agents") or ()):
            channel, target = data.get("channel"), data.get("reply_to")
            again = data.get(REGENERATE_KEY)
            if isinstance(target, int) and isinstance(again, str) and isinstance(channel, str):
                if again and self.serves(channel):
                    self._spawn(self._regenerate(channel, target, again))

    def _wake(self, data: Any, before: int | None) -> None:
        """``data["channel"]`` has activity (events after ``before``, if known)."""
        channel = data.get("channel") if isinstance(data, dict) else None
        if not isinstance(channel, str) or self.stopping or not self.serves(channel):
            return
        room = self.rooms.get(channel)
        if room is not None:
            room.touch()
            return
        seen = self._seen.pop(channel, None)
        if seen is not None:
            before = seen if before is None else min(seen, before)
        elif self.starting and before is not None:
            # The signals before this one came before the agent listened: a message posted
            # then, before somebody entered (channel.occupied names the serial after it), is
            # read again, as the rooms listed at start are.
            before = max(0, before - STARTUP_LOOKBACK)
        self._spawn(self.watch(channel, before))

    async def _regenerate(self, channel: str, target: int, again: str) -> None:
        room = await self.watch(channel, self._seen.pop(channel, None))
        if room is not None:
            self._on_regenerate(room, target, again)

    # ------------------------------------------------------------------ attach, detach

    async def watch(self, name: str, from_serial: int | None) -> Room | None:
        """Attach ``name`` (from ``from_serial``, if given) and hand its events on; the
        room, once attached (None if it could not be)."""
        room = self.rooms.get(name)
        if room is not None:
            await room.ready.wait()
            return room if self.rooms.get(name) is room else None
        if self.client is None or self.stopping:
            return None
        channel = self.client.channels.get(name)
        room = self.rooms[name] = Room(
            channel,
            RecentMessages(lambda serial: self._read(name, serial)),
            agent_answers=RateWindow(self.config.max_agent_answers_per_min),
        )
        try:
            # Subscribed before the attach goes out, so the replay after from_serial reaches it.
            room.recent.expect()
            subscription = channel.subscribe(
                lambda event: self._event(room, event),
                on_discontinuity=lambda gap: self._gap(room, gap),
            )
            attached = await channel.attach(
                from_serial=from_serial, types=WATCHED_TYPES, rewind=KEPT_MESSAGES
            )
            room.recent.prime(attached)
            await subscription
            room.unlisten = channel.objects.subscribe(lambda _: self._membership_changed(room))
            await self._follow_membership(room)
        except RoomcastError as exc:
            log.warning("agent %s cannot attach %s: %s", self.name, name, exc)
            if self.rooms.get(name) is room:
                del self.rooms[name]
            return None
        finally:
            if room.recent.expecting:  # the attach did not come through
                room.recent.reset()
            room.ready.set()
        if room.recent.serial is None and attached.messages is not UNSET:
            self._spawn(self._keep_again(room))  # a gap came after the attach, before now
        return room

    def _event(self, room: Room, event: Event) -> None:
        room.recent.apply(event)
        room.touch()
        self._on_event(room, event)

    def _gap(self, room: Room, gap: Discontinuity) -> None:
        """Events were lost (the log's epoch changed, retention): unless the room's latest
        messages came with this very snapshot, they are asked for again."""
        log.warning("agent %s: %s", self.name, gap)
        room.recent.gap(gap.serial)
        # Not during the room's first attach: watch() does it once that attach is done.
        if room.recent.serial is None and not room.recent.expecting and room.ready.is_set():
            self._spawn(self._keep_again(room))

    async def _keep_again(self, room: Room) -> None:
        """Attach ``room`` once more from where it is, with a ``rewind``, to keep its latest
        messages from that snapshot on; answers wait for it rather than read history."""
        if self.rooms.get(room.channel.name) is not room or self.stopping:
            return
        room.recent.expect()
        try:
            # From the channel's own serial and epoch: a log that started over once more is
            # still told apart.
            attached = await room.channel.attach(rewind=KEPT_MESSAGES)
            room.recent.prime(attached)
        except RoomcastError as exc:
            log.warning("agent %s cannot keep %s's messages: %s", self.name, room.channel.name, exc)
        except ClientClosed:
            pass  # the agent is stopping
        finally:
            if room.recent.expecting:  # the attach did not come through: read history
                room.recent.reset()

    async def _sweep(self) -> None:
        """Detach the rooms that went idle, every quarter of the idle time (at most 30 s)."""
        while not self.stopping:
            await asyncio.sleep(min(self.idle_s / 4, MAX_SWEEP_S))
            now = time.monotonic()
            for room in list(self.rooms.values()):
                if room.ready.is_set() and await self._idle(room, now):
                    await self._detach(room)

    async def _idle(self, room: Room, now: float) -> bool:
        if room.running or room.queue.locked() or now - room.active_at < self.idle_s:
            return False
        if room.channel.state != "attached":
            return False  # reconnecting: the client attaches it again
        people = [m for m in await room.channel.presence.members() if not _is_agent(m.data)]
        if people:
            room.touch()  # somebody is here: the agent stays with them
        return not people

    async def _detach(self, room: Room) -> None:
        name = room.channel.name
        async with room.presence_lock:
            if self.rooms.get(name) is not room:
                return
            del self.rooms[name]
            if room.channel.serial is not None:
                self._seen[name] = room.channel.serial
            room.present = False
            room.unlisten()
            with contextlib.suppress(RoomcastError):
                await room.channel.detach()  # leaves its presence too
        log.debug("agent %s detached idle %s", self.name, name)

    # ------------------------------------------------------------------ presence

    def _membership_changed(self, room: Room) -> None:
        """A live object of the room changed: ``root.agents`` may have added or removed
        the agent."""
        room.touch()
        if room.lists(self.name) != room.present:
            self._spawn(self._follow_membership(room))

    async def _follow_membership(self, room: Room) -> None:
        """Be in the room's presence exactly while the agent is in the room (``root.agents``
        lists it, or the room has no list): an agent that will not answer is not shown."""
        async with room.presence_lock:
            listed = room.lists(self.name) and not self.stopping
            if listed == room.present or self.rooms.get(room.channel.name) is not room:
                return
            if listed:
                await room.channel.presence.enter(self.presence("idle"))
            else:
                await room.channel.presence.leave()
            room.present = listed
            log.info(
                "agent %s %s %s", self.name, "joins" if listed else "leaves", room.channel.name
            )

    def show(self, room: Room, status: str, *, queued: bool = False) -> None:
        """Update the agent's presence without waiting for the ``ok`` (it is only shown);
        ``queued``: an answer waits its turn (``"queued": true`` in the data)."""
        self._spawn(_quietly(self._update_presence(room, self.presence(status, queued=queued))))

    async def _update_presence(self, room: Room, data: dict[str, Any]) -> None:
        async with room.presence_lock:
            if room.present:  # not after it left the room's list
                await room.channel.presence.update(data)

    def presence(self, status: str, *, queued: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": "agent", "status": status, "model": self.config.model}
        if queued:
            data["queued"] = True
        return data


async def _matching(server: str, pattern: str, key: str | None) -> Any:
    """The channels matching ``pattern``, page by page."""
    prefix = pattern[:-1] if pattern.endswith("*") else pattern
    after = ""
    while True:
        page = await list_channels(server, prefix=prefix, limit=LIST_PAGE, key=key, after=after)
        for summary in page:
            if pattern_matches(pattern, summary.channel):
                yield summary
        if len(page) < LIST_PAGE:
            return
        after = page[-1].channel


def _is_agent(data: Any) -> bool:
    return isinstance(data, dict) and data.get("kind") == "agent"


async def _quietly(coro: Any) -> None:
    with contextlib.suppress(Exception):
        await coro


__all__ = ["AgentRooms"]
