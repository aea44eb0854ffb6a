"""One server node: the store, the bus, and the clients attached here.

The node is the only place where channel rules live: the write rules are its
:class:`~roomcast.core.sequencer.Sequencer` part, identity is
:class:`~roomcast.core.identity.Identities`, delivery is
:class:`~roomcast.core.fanout.FanOut` and the subscriber core, presence and resume are
:class:`~roomcast.core.presence.PresenceKeeper`. Transports (the WebSocket endpoint,
REST, SSE) are thin adapters that turn frames and requests into calls on the node.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any

import msgspec
from msgspec import UNSET

from roomcast.aio import cancel_and_wait
from roomcast.backends.base import Store
from roomcast.protocol.errors import CLOSE_SERVICE_RESTART, BadRequest, RateLimited, Unavailable
from roomcast.protocol.http import AgentInfo, ChannelSummary
from roomcast.protocol.messages import (
    Attach,
    Attached,
    Event,
    History,
    HistoryReply,
    Message,
    ObjectsSnapshot,
    Ok,
    PresenceEvent,
    PresenceMember,
    PresenceOp,
    PresenceRequest,
    Signal,
    SignalEvent,
    ref_of,
)
from roomcast.settings import Settings

from .activity import ActivityHints
from .authz import Principal, authorize
from .fanout import AttachResult, FanOut, NodeStats
from .identity import Identities
from .presence import Client, PresenceKeeper, now_ms
from .sequencer import META_CHANNELS, Sequencer
from .streams import AppendRollup, StreamSweeper

log = logging.getLogger("roomcast.node")

CHANNEL_OCCUPIED = "channel.occupied"  # the meta:channels signal of a channel somebody entered
_LIST_SCAN_MAX = 10_000  # channels read at most to fill one page of a filtered listing


def within_bytes(messages: list[Message], budget: int, *, newest: bool) -> list[Message]:
    """The part of a history page (oldest first) whose JSON fits in ``budget`` bytes, one
    message at least: a page is one reply, and a reply must fit a connection's outbound
    budget. It keeps the newest messages (a page read backwards) or the oldest (forwards);
    the caller reads on from where it ends."""
    size, count = 0, 0
    for message in reversed(messages) if newest else messages:
        size += len(msgspec.json.encode(message))
        if count and size > budget:
            break
        count += 1
    return messages[len(messages) - count :] if newest else messages[:count]


class Node(Sequencer):
    """Sequencing (through the Store), fan-out, presence and resume for one process."""

    def __init__(self, store: Store, settings: Settings) -> None:
        super().__init__()
        self.store = store
        self.settings = settings
        self.node_id = secrets.token_hex(6)
        self.connections: dict[str, Client] = {}  # connection_id → live connection
        self._by_resume_key: dict[str, Client] = {}
        self._per_client: dict[str, int] = {}  # client_id → live connections here
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self.identities = Identities(settings)
        self.agents: list[AgentInfo] = []  # the agents configured on this server
        self.fanout = FanOut(store, settings, self.spawn)
        self.rollup = AppendRollup(store, settings)  # streams: appends merged per window
        self.sweeper = StreamSweeper(store, settings, self.node_id, self.rollup)
        self.presence_keeper = PresenceKeeper(self)
        self.fanout.check_store = self.presence_keeper.check_store
        self.hints = ActivityHints(
            self._publish_signal, self.latest_serial, self.spawn, settings.activity_hint_s
        )

    @property
    def agent_names(self) -> frozenset[str]:
        """The names of this server's agents: reserved for API-key holders."""
        return self.identities.reserved

    @agent_names.setter
    def agent_names(self, names: frozenset[str]) -> None:
        self.identities.reserved = frozenset(names)

    @property
    def stats(self) -> NodeStats:
        return self.fanout.stats

    @property
    def subscribed_channels(self) -> int:
        """Channels with at least one subscriber on this node."""
        return self.fanout.subscribed_channels

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.store.bus.open()
        await self.store.open()
        await self.store.node_heartbeat(self.node_id, self._node_ttl)
        await self.presence_keeper.start()
        self._ticker = asyncio.create_task(self._tick(), name="roomcast-node-ticker")
        self.sweeper.start()

    async def stop(self) -> None:
        """Close every connection (clients resume elsewhere), then flush the store."""
        if self._ticker is not None:
            await cancel_and_wait(self._ticker)
        for conn in list(self.connections.values()):
            await conn.close(CLOSE_SERVICE_RESTART, "server restarting")
        self.presence_keeper.stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.retry_announcements()
        except Unavailable as exc:
            log.warning("channels left unannounced on %s: %s", META_CHANNELS, exc)
        await self.sweeper.aclose()
        await self.rollup.aclose()
        await self.store.aclose()
        await self.store.bus.aclose()

    @property
    def _node_ttl(self) -> float:
        return max(self.settings.presence_grace_s, 5.0)

    async def _tick(self) -> None:
        """Heartbeats for idle connections, node liveness, and periodic purges."""
        interval = min(self.settings.heartbeat_s / 2, 5.0)
        next_purge = 0.0
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            self.fanout.beat(now)
            try:
                await self.store.node_heartbeat(self.node_id, self._node_ttl)
                for channel, member in await self.store.reap_dead_nodes():
                    await self.broadcast_presence(channel, "leave", member)
                await self.presence_keeper.tick()
                await self.retry_announcements()
                if now >= next_purge:
                    next_purge = now + 60
                    dropped = await self.store.purge(now_ms(), self.settings.retention_ms)
                    if dropped:
                        log.info("retention removed %d events", dropped)
            except Unavailable as exc:  # the store says an outage once; not once a tick
                log.debug("periodic store maintenance failed: %s", exc)
            except Exception:
                log.exception("periodic store maintenance failed")

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run a background task that the node waits for at shutdown."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ connections

    async def connect(
        self, principal: Principal, resume_key: str | None
    ) -> tuple[str, dict[str, Any], bool]:
        """Pick the connection id for a new connection: ``(connection_id, presence, resumed)``
        (see :meth:`PresenceKeeper.resume`)."""
        return await self.presence_keeper.resume(principal, resume_key)

    def check_client_connections(self, client_id: str) -> None:
        """42900 when ``client_id`` already has ``max_connections_per_client`` connections."""
        limit = self.settings.max_connections_per_client
        if self._per_client.get(client_id, 0) >= limit:
            raise RateLimited(f"{client_id!r} already has {limit} connections open here")

    async def register(self, conn: Client) -> None:
        """A new connection; its resume session is stored before it is told its key."""
        self.connections[conn.session.connection_id] = conn
        self._by_resume_key[conn.resume_key] = conn
        client_id = conn.session.client_id
        self._per_client[client_id] = self._per_client.get(client_id, 0) + 1
        self.fanout.open(conn)
        await self.presence_keeper.connected(conn)

    def connection_for(self, resume_key: str) -> Client | None:
        """The open connection here that ``resume_key`` was issued to."""
        return self._by_resume_key.get(resume_key)

    def forget(self, conn: Client) -> None:
        if self.connections.get(conn.session.connection_id) is conn:
            del self.connections[conn.session.connection_id]
            client_id = conn.session.client_id
            left = self._per_client.get(client_id, 1) - 1
            if left > 0:
                self._per_client[client_id] = left
            else:
                self._per_client.pop(client_id, None)
        self._by_resume_key.pop(conn.resume_key, None)
        self.fanout.close(conn)
        for channel in list(conn.session.attachments):
            self.fanout.unsubscribe(conn, channel)

    async def disconnect(self, conn: Client, *, clean: bool) -> None:
        """The connection is gone. A clean close leaves presence at once; a drop waits
        ``presence_grace_s`` for a resume."""
        self.forget(conn)
        await self.presence_keeper.disconnected(conn, clean=clean)

    async def attach(self, principal: Principal, req: Attach) -> AttachResult:
        """The snapshot for an attach whose connection is already subscribed (so no live
        event can fall between the snapshot and the live stream)."""
        await self.store.bus.subscribe(req.channel)
        snap = await self.fanout.snapshot(
            req.channel,
            from_serial=req.from_serial,
            rewind=req.rewind or 0,
            objects=principal.capability.allows("object-subscribe", req.channel),
        )
        members = await self.store.presence_members(req.channel)
        reason: str | None = None
        replay: Sequence[Event] = ()
        if req.from_serial is not None:
            if req.epoch is not None and req.epoch != snap.epoch:
                reason = f"epoch changed from {req.epoch} to {snap.epoch}: reload from history"
            elif req.from_serial > snap.serial:
                reason = (
                    f"from_serial {req.from_serial} is beyond the latest serial {snap.serial}: "
                    "reload from history"
                )
            elif snap.events is None or req.from_serial + 1 < snap.first_serial:
                reason = (
                    f"events after {req.from_serial} are past retention "
                    f"(oldest kept: {snap.first_serial}): reload from history"
                )
            else:
                replay = snap.events
        attached = Attached(
            ref=ref_of(req.ref),
            channel=req.channel,
            epoch=snap.epoch,
            serial=snap.serial,
            resumed=req.from_serial is not None and reason is None,
            messages=(
                within_bytes(list(snap.messages), self.settings.outbound_bytes, newest=True)
                if req.rewind
                else UNSET
            ),
            presence=members,
            objects=UNSET if snap.objects is None else snap.objects,
        )
        return AttachResult(attached, replay, reason)

    # ------------------------------------------------------------------ reads

    async def objects(self, principal: Principal, channel: str) -> ObjectsSnapshot:
        """The channel's live objects as of its latest serial (needs ``object-subscribe``)."""
        authorize(principal, "object-subscribe", channel)
        return await self.store.objects(channel)

    async def history(self, principal: Principal, req: History) -> HistoryReply:
        authorize(principal, "history", req.channel)
        if req.limit > self.settings.max_history_limit:
            raise BadRequest(
                f"limit {req.limit} is over this server's largest history page, "
                f"{self.settings.max_history_limit}"
            )
        messages, more = await self.store.history(
            req.channel, before=req.before, after=req.after, limit=req.limit
        )
        kept = within_bytes(messages, self.settings.outbound_bytes, newest=req.after is None)
        return HistoryReply(
            ref=ref_of(req.ref),
            channel=req.channel,
            messages=kept,
            has_more=more or len(kept) < len(messages),
        )

    async def presence_members(self, principal: Principal, channel: str) -> list[PresenceMember]:
        """Who is present on ``channel`` (reading presence needs ``subscribe``)."""
        authorize(principal, "subscribe", channel)
        return await self.store.presence_members(channel)

    async def list_channels(
        self, principal: Principal, prefix: str, limit: int, after: str = ""
    ) -> list[ChannelSummary]:
        """Channels with at least one event whose name starts with ``prefix``, by name
        (after ``after``, if set), keeping only those ``principal`` may subscribe to."""
        scan = limit
        while True:
            infos = await self.store.list_channels(prefix, scan, after)
            allowed = [i for i in infos if principal.capability.allows("subscribe", i.channel)]
            # Refused channels take room in a page: read a larger one, within reason.
            if len(allowed) >= limit or len(infos) < scan or scan >= _LIST_SCAN_MAX:
                break
            scan = min(scan * 4, _LIST_SCAN_MAX)
        return [
            ChannelSummary(
                channel=i.channel,
                epoch=i.epoch,
                serial=i.serial,
                updated_at=i.updated_at,
                occupancy=self.fanout.occupancy(i.channel),
            )
            for i in allowed[:limit]
        ]

    # ------------------------------------------------------------------ presence, signals

    async def presence(
        self,
        principal: Principal,
        conn: Client,
        req: PresenceRequest,
        *,
        frame_size: int | None = None,
    ) -> Ok:
        """Enter, update or leave ``req.channel``'s presence as ``conn``."""
        channel, op, data = req.channel, req.op, req.data
        self.check_message_size(data, None, frame_size=frame_size)
        authorize(principal, "presence", channel)
        session = conn.session
        member = PresenceMember(
            client_id=session.client_id,
            connection_id=session.connection_id,
            data=data,
            timestamp=now_ms(),
        )
        if op == "leave":
            if session.presence.pop(channel, UNSET) is not UNSET:
                await self.presence_keeper.changed(conn)
            removed = await self.store.presence_remove(
                channel, member.client_id, member.connection_id, holder=self.node_id
            )
            if removed:
                await self.broadcast_presence(channel, "leave", member)
            return Ok()
        was_present = channel in session.presence
        occupied = True  # somebody was present before
        if not was_present:
            limit = self.settings.max_presence_members
            members = len(await self.store.presence_members(channel))
            if members >= limit:
                raise RateLimited(f"{channel} already has {limit} presence members")
            occupied = members > 0
        session.presence[channel] = data
        await self.store.presence_set(channel, member, self.node_id)
        # Stored before the ok: a client that drops right after resumes with it anywhere.
        await self.presence_keeper.changed(conn)
        await self.broadcast_presence(channel, "update" if was_present else "enter", member)
        if not occupied:
            await self._announce_occupied(channel)
        if not was_present and principal.kind != "key":  # a person: agents may be needed
            self.hints.hint(channel)
        return Ok()

    async def _announce_occupied(self, channel: str) -> None:
        """Somebody entered ``channel``'s presence, where nobody was: a ``channel.occupied``
        signal on ``meta:channels`` lets agents join a room before its first message. A
        signal is not stored: a channel still exists from its first event."""
        if channel == META_CHANNELS:
            return
        try:
            # With the latest serial: an agent attaching from it misses nothing after.
            data = {"channel": channel, "serial": await self.latest_serial(channel)}
            signal = SignalEvent(
                channel=META_CHANNELS, client_id=None, name=CHANNEL_OCCUPIED, data=data
            )
            await self.store.bus.publish_signal(signal)
        except Unavailable as exc:  # only a hint: agents still find the room at its first event
            log.debug("could not announce that %s is occupied: %s", channel, exc)

    async def leave_channel(self, conn: Client, channel: str) -> None:
        data = conn.session.presence.pop(channel, UNSET)
        if data is not UNSET:
            await self.presence_keeper.changed(conn)
            session = conn.session
            await self.presence_keeper.leave(
                session.client_id, session.connection_id, {channel: data}
            )

    async def latest_serial(self, channel: str) -> int:
        """The serial of ``channel``'s latest event (0 if it has none)."""
        info = await self.store.channel_info(channel)
        return info.serial if info is not None else 0

    async def _publish_signal(self, signal: SignalEvent) -> None:
        await self.store.bus.publish_signal(signal)

    async def broadcast_presence(
        self, channel: str, op: PresenceOp, member: PresenceMember
    ) -> None:
        await self.store.bus.publish_presence(
            PresenceEvent(
                channel=channel,
                op=op,
                client_id=member.client_id,
                connection_id=member.connection_id,
                data=member.data,
                timestamp=member.timestamp,
            )
        )

    async def signal(
        self, principal: Principal, req: Signal, *, frame_size: int | None = None
    ) -> None:
        self.check_message_size(req.data, None, frame_size=frame_size)
        authorize(principal, "signal", req.channel)
        await self.store.bus.publish_signal(
            SignalEvent(
                channel=req.channel, client_id=principal.client_id, name=req.name, data=req.data
            )
        )

    async def claim(
        self, principal: Principal, channel: str, key: str, ttl_s: float, owner: str
    ) -> Ok:
        """Grant ``key`` to one ``owner`` (a connection id) until ``ttl_s`` passes; the
        same owner may claim it again (renew). Workers of one agent share a client_id, so
        the owner is the connection, not the client. Who may claim what: authorize_claim."""
        self.identities.authorize_claim(principal, channel, key)
        granted = await self.store.claim(f"{channel}\0{key}", owner, ttl_s)
        return Ok(granted=granted)


__all__ = ["CHANNEL_OCCUPIED", "META_CHANNELS", "AttachResult", "Node", "NodeStats"]
