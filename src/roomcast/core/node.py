"""One server node: the store, the bus, and the connections attached here.

The node is the only place where channel rules live. Transports (the WebSocket endpoint,
REST and SSE) are thin adapters that turn frames and requests into calls on the node (and,
for WebSockets, on :class:`~roomcast.core.connection.Connection`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from msgspec import UNSET

from roomcast.backends.base import REPLAY_PAGE, Appended, Store
from roomcast.protocol import objects as live
from roomcast.protocol.codec import Codec
from roomcast.protocol.errors import (
    CLOSE_SERVICE_RESTART,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    TooLarge,
    Unavailable,
)
from roomcast.protocol.http import MAX_BATCH, AgentInfo, ChannelSummary
from roomcast.protocol.messages import (
    Append,
    Attach,
    Attached,
    Cancel,
    Delete,
    Event,
    History,
    HistoryReply,
    MapRemove,
    MapSet,
    Message,
    ObjectOp,
    ObjectsSnapshot,
    Ok,
    PresenceEvent,
    PresenceMember,
    PresenceOp,
    Publish,
    Signal,
    SignalEvent,
    Update,
    ref_of,
)
from roomcast.settings import Settings

from .authz import Principal, authorize
from .presence import PresenceKeeper, now_ms
from .streams import AppendRollup, StreamSweeper

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger("roomcast.node")

META_CHANNELS = "meta:channels"
_LIST_SCAN_MAX = 10_000  # channels read at most to fill one page of a filtered listing


class Subscriber(Protocol):
    """What the fan-out delivers to: a WebSocket :class:`Connection`, or an SSE stream.

    ``deliver`` gets the live events of a channel the subscriber is subscribed to, each
    already encoded with ``codec`` (once for every subscriber of that format);
    ``deliver_ephemeral`` gets presence and signal messages. Both must not block.
    """

    codec: Codec

    def deliver(self, channel: str, events: Sequence[Event], frames: Sequence[bytes]) -> None: ...

    def deliver_ephemeral(self, channel: str, frame: bytes) -> None: ...


@dataclass(slots=True)
class NodeStats:
    """Counters the fan-out keeps as plain integers; ``/metrics`` reads them when scraped."""

    deliveries: int = 0  # event frames handed to subscribers
    slow_consumers: int = 0  # subscribers dropped for a backlog over ``outbound_queue``


@dataclass(slots=True)
class AttachResult:
    """What the ``attached`` reply needs, read consistently as of ``attached.serial``.

    ``replay`` is the first page of events after ``from_serial``; when it ends before
    ``attached.serial``, the rest is read with :meth:`Node.replay_page`.
    """

    attached: Attached
    replay: Sequence[Event]
    discontinuity: str | None


class Node:
    """Sequencing (through the Store), fan-out, presence and resume for one process."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.node_id = secrets.token_hex(6)
        self.connections: dict[str, Connection] = {}  # connection_id → live connection
        self._by_resume_key: dict[str, Connection] = {}
        self._per_client: dict[str, int] = {}  # client_id → live connections here
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dirty: list[Connection] = []
        self._announced: set[str] = set()
        self._ticker: asyncio.Task[None] | None = None
        self.stats = NodeStats()
        # The agents configured on this server: their names are not for anonymous clients.
        self.agent_names: frozenset[str] = frozenset()
        self.agents: list[AgentInfo] = []
        self.rollup = AppendRollup(store, settings)  # streams: appends merged per window
        self.sweeper = StreamSweeper(store, settings, self.node_id, self.rollup)
        self.presence_keeper = PresenceKeeper(self)
        store.bus.bind(self)

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
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for conn in list(self.connections.values()):
            await conn.close(CLOSE_SERVICE_RESTART, "server restarting")
        self.presence_keeper.stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
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
            for conn in list(self.connections.values()):
                if now - conn.last_sent >= self.settings.heartbeat_s:
                    conn.send_heartbeat()
            try:
                await self.store.node_heartbeat(self.node_id, self._node_ttl)
                for channel, member in await self.store.reap_dead_nodes():
                    await self.broadcast_presence(channel, "leave", member)
                await self.presence_keeper.tick()
                if now >= next_purge:
                    next_purge = now + 60
                    dropped = await self.store.purge(now_ms(), self.settings.retention_ms)
                    if dropped:
                        log.info("retention removed %d events", dropped)
            except Unavailable as exc:  # the store says an outage once; not once a tick
                log.debug("periodic store maintenance failed: %s", exc)
            except Exception:
                log.exception("periodic store maintenance failed")

    def flush_soon(self, conn: Connection) -> None:
        """Have ``conn`` write its queue once the current turn of the event loop is over."""
        self._dirty.append(conn)
        if len(self._dirty) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run a background task that the node waits for at shutdown."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ bus sink

    def on_events(self, channel: str, events: Sequence[Event]) -> None:
        subscribers = self._subscribers.get(channel)
        if not subscribers:
            return
        self.stats.deliveries += len(events) * len(subscribers)
        encoded: dict[str, list[bytes]] = {}
        for conn in tuple(subscribers):
            frames = encoded.get(conn.codec.format)
            if frames is None:
                frames = encoded[conn.codec.format] = [conn.codec.encode(e) for e in events]
            conn.deliver(channel, events, frames)

    def on_epoch(self, channel: str, epoch: str) -> None:
        """The store's log of ``channel`` started over under ``epoch`` (a shared store lost
        its data). Subscribers here hold serials of the old log: they are closed (1012) to
        attach again from their serial and epoch, which gives them ``discontinuity``, then
        the new log's events."""
        self._reattach(channel, f"the log of {channel} was reset: attach again")

    def reattach_all(self, reason: str) -> None:
        """Have every subscriber here attach again (the store lost its data)."""
        for channel in list(self._subscribers):
            self._reattach(channel, reason)

    def _reattach(self, channel: str, reason: str) -> None:
        from .connection import Connection

        for conn in tuple(self._subscribers.get(channel, ())):
            if isinstance(conn, Connection):
                self.spawn(conn.close(CLOSE_SERVICE_RESTART, reason))
            else:  # an SSE stream: it ends, and its client reconnects with Last-Event-ID
                close = getattr(conn, "close", None)
                if callable(close):
                    close()

    def on_presence(self, event: PresenceEvent) -> None:
        self._fan_out_ephemeral(event.channel, event)

    def on_signal(self, event: SignalEvent) -> None:
        self._fan_out_ephemeral(event.channel, event)

    def _fan_out_ephemeral(self, channel: str, event: PresenceEvent | SignalEvent) -> None:
        subscribers = self._subscribers.get(channel)
        if not subscribers:
            return
        encoded: dict[str, bytes] = {}
        for conn in tuple(subscribers):
            frame = encoded.get(conn.codec.format)
            if frame is None:
                frame = encoded[conn.codec.format] = conn.codec.encode(event)
            conn.deliver_ephemeral(channel, frame)

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

    async def register(self, conn: Connection) -> None:
        """A new connection; its resume session is stored before it is told its key."""
        self.connections[conn.session.connection_id] = conn
        self._by_resume_key[conn.resume_key] = conn
        client_id = conn.session.client_id
        self._per_client[client_id] = self._per_client.get(client_id, 0) + 1
        await self.presence_keeper.connected(conn)

    def connection_for(self, resume_key: str) -> Connection | None:
        """The open connection here that ``resume_key`` was issued to."""
        return self._by_resume_key.get(resume_key)

    def forget(self, conn: Connection) -> None:
        if self.connections.get(conn.session.connection_id) is conn:
            del self.connections[conn.session.connection_id]
            client_id = conn.session.client_id
            left = self._per_client.get(client_id, 1) - 1
            if left > 0:
                self._per_client[client_id] = left
            else:
                self._per_client.pop(client_id, None)
        self._by_resume_key.pop(conn.resume_key, None)
        for channel in list(conn.session.attachments):
            self.unsubscribe(conn, channel)

    async def disconnect(self, conn: Connection, *, clean: bool) -> None:
        """The connection is gone. A clean close leaves presence at once; a drop waits
        ``presence_grace_s`` for a resume."""
        self.forget(conn)
        await self.presence_keeper.disconnected(conn, clean=clean)

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, conn: Subscriber, channel: str) -> None:
        self._subscribers.setdefault(channel, set()).add(conn)

    def unsubscribe(self, conn: Subscriber, channel: str) -> None:
        subscribers = self._subscribers.get(channel)
        if subscribers is not None:
            subscribers.discard(conn)
            if not subscribers:
                del self._subscribers[channel]
                self.spawn(self.store.bus.unsubscribe(channel))

    def occupancy(self, channel: str) -> int:
        return len(self._subscribers.get(channel, ()))

    @property
    def subscribed_channels(self) -> int:
        """Channels with at least one subscriber on this node."""
        return len(self._subscribers)

    async def attach(self, principal: Principal, req: Attach) -> AttachResult:
        """The snapshot for an attach whose connection is already subscribed (so no live
        event can fall between the snapshot and the live stream)."""
        await self.store.bus.subscribe(req.channel)
        snap = await self.store.snapshot(
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
            messages=snap.messages if req.rewind else UNSET,
            presence=members,
            objects=UNSET if snap.objects is None else snap.objects,
        )
        return AttachResult(attached, replay, reason)

    async def replay_page(self, channel: str, after: int, until: int) -> Sequence[Event]:
        """The next events after ``after`` and up to ``until``, for a client catching up.

        Raises :class:`Conflict` if retention removed events since the replay began.
        """
        events = await self.store.read_events(channel, after, min(REPLAY_PAGE, until - after))
        if not events or events[0].serial != after + 1:
            raise Conflict(f"events after {after} were removed by retention during the replay")
        return [e for e in events if e.serial <= until]

    # ------------------------------------------------------------------ writes

    async def append(self, event: Event, idempotency_key: str | None = None) -> Ok:
        """Sequence one event; announce the channel on ``meta:channels`` at its first event."""
        result = await self.store.append(event, idempotency_key=idempotency_key)
        return self.acknowledge(event.channel, result)

    def acknowledge(self, channel: str, result: Appended) -> Ok:
        """The ``ok`` for a stored event; the channel's first event announces it."""
        if result.serial == 1 and not result.duplicate:
            self._announce(channel)
        return Ok(serial=result.serial if result.serial is not None else UNSET)

    def _announce(self, channel: str) -> None:
        if channel == META_CHANNELS or channel in self._announced:
            return
        self._announced.add(channel)
        if len(self._announced) > 10_000:
            self._announced.clear()
        event = self.new_event(
            META_CHANNELS,
            "create",
            None,
            name="channel.created",
            data={"channel": channel},
            extras={},
            streaming=False,
            id=None,
        )
        self.spawn(self._append_quietly(event, f"channel.created:{channel}"))

    async def _append_quietly(self, event: Event, key: str) -> None:
        try:
            await self.store.append(event, idempotency_key=key)
        except Exception:
            log.exception("could not announce %s on %s", event.data, event.channel)

    @staticmethod
    def new_event(channel: str, type_: Any, client_id: str | None, **fields: Any) -> Event:
        """An event to sequence; the store assigns ``serial`` and ``timestamp``."""
        return Event(
            channel=channel, serial=0, type=type_, client_id=client_id, timestamp=0, **fields
        )

    async def publish(self, principal: Principal, req: Publish) -> Ok:
        return self.acknowledge(req.channel, await self.submit_publish(principal, req))

    def submit_publish(self, principal: Principal, req: Publish) -> Awaitable[Appended]:
        """Authorize and queue a publish at once (no task): pipelined publishes keep their
        order and share commits. Await the result, then :meth:`acknowledge` it."""
        authorize(principal, "publish", req.channel)
        return self.store.submit(self._create_event(principal, req), idempotency_key=req.id)

    def _create_event(self, principal: Principal, req: Publish) -> Event:
        return self.new_event(
            req.channel,
            "create",
            principal.client_id,
            id=req.id,
            name=req.name,
            data=req.data,
            extras=req.extras or {},
            streaming=req.streaming,
        )

    async def publish_batch(
        self, principal: Principal, channel: str, requests: Sequence[Publish]
    ) -> list[int]:
        """Publish several messages to one channel, all or nothing: every one is checked
        (authorization, size) before any is stored, and the store appends them atomically.

        Returns one ``msg_serial`` per request; a repeated ``id`` gets the first serial.
        """
        if not requests:
            raise BadRequest("a batch needs at least one message")
        if len(requests) > MAX_BATCH:
            raise BadRequest(f"a batch holds at most {MAX_BATCH} messages, not {len(requests)}")
        if any(req.channel != channel for req in requests):
            raise BadRequest(f"every message of a batch must be for {channel}")
        authorize(principal, "publish", channel)
        for index, req in enumerate(requests):
            self.check_message_size(req.data, req.extras, what=f"message {index}")
        events = [self._create_event(principal, req) for req in requests]
        results = await self.store.append_batch(events, [req.id for req in requests])
        if any(r.serial == 1 and not r.duplicate for r in results):
            self._announce(channel)
        serials = [r.serial for r in results]
        if None in serials:  # a create is never a no-op; a store that says so is broken
            raise RuntimeError(f"the store stored no serial for a create on {channel}")
        return [s for s in serials if s is not None]

    def check_message_size(self, data: Any, extras: Any, *, what: str = "message") -> None:
        """Raise :class:`TooLarge` when ``data`` + ``extras`` (as JSON) exceed
        ``max_message_bytes``."""
        limit = self.settings.max_message_bytes
        size = len(msgspec.json.encode(data)) + (len(msgspec.json.encode(extras)) if extras else 0)
        if size > limit:
            raise TooLarge(f"{what} is {size} bytes, over the {limit} byte limit")

    async def change(self, principal: Principal, req: Append | Update | Delete | Cancel) -> Ok:
        """A change request of any transport, as :meth:`change_message` takes it."""
        if isinstance(req, Append):
            return await self.change_message(
                principal, req.channel, req.msg_serial, "append", data=req.data
            )
        if isinstance(req, Update):
            changes = {
                k: v
                for k, v in (("data", req.data), ("extras", req.extras), ("status", req.status))
                if v is not UNSET
            }
            return await self.change_message(
                principal, req.channel, req.msg_serial, "update", **changes
            )
        if isinstance(req, Cancel):
            return await self.change_message(
                principal, req.channel, req.msg_serial, "cancel", reason=req.reason
            )
        return await self.change_message(principal, req.channel, req.msg_serial, "delete")

    async def change_message(
        self, principal: Principal, channel: str, msg_serial: int, verb: str, **fields: Any
    ) -> Ok:
        """``update``, ``delete``, ``cancel`` (own/any rules) and ``append`` (author only).

        Appends go through the rollup (merged per ``rollup_ms`` window, in submission order:
        nothing is awaited before they are queued); any other change first sequences the
        appends still pending for the message.
        """
        if verb == "append":
            authorize(principal, "publish", channel)
            data = fields["data"]
            stored = await self.rollup.submit(principal.client_id, channel, msg_serial, data)
            return self.acknowledge(channel, stored)
        message = await self.store.get_message(channel, msg_serial)
        if not principal.capability.allows(f"{verb}-any", channel):
            authorize(principal, f"{verb}-own", channel)  # type: ignore[arg-type]
            if message is not None and not await self._is_own(principal, channel, message, verb):
                raise Forbidden(f"message {msg_serial} is not yours to {verb}")
        if message is None:
            raise NotFound(f"no message {msg_serial} on {channel}")
        event = self.new_event(channel, verb, principal.client_id, msg_serial=msg_serial, **fields)
        await self.rollup.settle(channel, msg_serial)
        result = await self.store.append(event)
        if result.event is not None:
            self.rollup.observe(result.event)
            if verb == "cancel":
                self.sweeper.cancelled(channel, msg_serial)
        return self.acknowledge(channel, result)

    async def _is_own(
        self, principal: Principal, channel: str, message: Message, verb: str
    ) -> bool:
        if message.client_id == principal.client_id:
            return True
        reply_to = message.extras.get("reply_to")
        if verb == "cancel" and isinstance(reply_to, int) and not isinstance(reply_to, bool):
            # An answer to one of your messages is yours to cancel.
            asked = await self.store.get_message(channel, reply_to)
            return asked is not None and asked.client_id == principal.client_id
        return False

    async def annotate(
        self, principal: Principal, channel: str, msg_serial: int, name: str, op: str
    ) -> Ok:
        authorize(principal, "annotate", channel)
        event = self.new_event(
            channel,
            "annotation",
            principal.client_id,
            msg_serial=msg_serial,
            kind="reaction",
            name=name,
            op=op,
        )
        return await self.append(event)

    async def object_op(self, principal: Principal, channel: str, op: ObjectOp) -> Ok:
        """A live-object operation (PROTOCOL.md §5): ``ok`` with its serial, and the new
        ``object_id`` for a create. Changing ``root.agents`` also needs ``agent-admin``."""
        authorize(principal, "object-publish", channel)
        if isinstance(op, MapSet | MapRemove) and await self._touches_agents(channel, op):
            authorize(principal, "agent-admin", channel)
        event = self.new_event(channel, "object", principal.client_id, op=op)
        result = await self.store.append(event)
        ok = self.acknowledge(channel, result)
        if result.event is not None and isinstance(result.event.object_id, str):
            ok = msgspec.structs.replace(ok, object_id=result.event.object_id)
        return ok

    async def _touches_agents(self, channel: str, op: MapSet | MapRemove) -> bool:
        if op.object_id == live.ROOT:
            return op.key == live.AGENTS_KEY
        root = await self.store.get_object(channel, live.ROOT)
        return live.touches_agents(op, lambda oid: root if oid == live.ROOT else None)

    async def objects(self, principal: Principal, channel: str) -> ObjectsSnapshot:
        """The channel's live objects as of its latest serial (needs ``object-subscribe``)."""
        authorize(principal, "object-subscribe", channel)
        return await self.store.objects(channel)

    # ------------------------------------------------------------------ reads

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
        return HistoryReply(
            ref=ref_of(req.ref), channel=req.channel, messages=messages, has_more=more
        )

    async def presence_members(self, principal: Principal, channel: str) -> list[PresenceMember]:
        """Who is present on ``channel`` (reading presence needs ``subscribe``)."""
        authorize(principal, "subscribe", channel)
        return await self.store.presence_members(channel)

    async def list_channels(
        self, principal: Principal, prefix: str, limit: int
    ) -> list[ChannelSummary]:
        """Channels with at least one event whose name starts with ``prefix``, by name,
        keeping only those ``principal`` may subscribe to."""
        scan = limit
        while True:
            infos = await self.store.list_channels(prefix, scan)
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
                occupancy=self.occupancy(i.channel),
            )
            for i in allowed[:limit]
        ]

    # ------------------------------------------------------------------ presence, signals

    async def presence(
        self, principal: Principal, conn: Connection, channel: str, op: PresenceOp, data: Any
    ) -> Ok:
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
        if not was_present:
            limit = self.settings.max_presence_members
            if len(await self.store.presence_members(channel)) >= limit:
                raise RateLimited(f"{channel} already has {limit} presence members")
        session.presence[channel] = data
        await self.store.presence_set(channel, member, self.node_id)
        # Stored before the ok: a client that drops right after resumes with it anywhere.
        await self.presence_keeper.changed(conn)
        await self.broadcast_presence(channel, "update" if was_present else "enter", member)
        return Ok()

    async def leave_channel(self, conn: Connection, channel: str) -> None:
        data = conn.session.presence.pop(channel, UNSET)
        if data is not UNSET:
            await self.presence_keeper.changed(conn)
            session = conn.session
            await self.presence_keeper.leave(
                session.client_id, session.connection_id, {channel: data}
            )

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

    async def signal(self, principal: Principal, req: Signal) -> None:
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
        the owner is the connection, not the client."""
        authorize(principal, "claim", channel)
        granted = await self.store.claim(f"{channel}\0{key}", owner, ttl_s)
        return Ok(granted=granted)


__all__ = ["META_CHANNELS", "AttachResult", "Node", "NodeStats", "Subscriber"]
