"""Presence and resume for the connections of one node.

Who is present where lives in the Store, each member held by the node of its connection. A
connection's resume session is in the Store from the moment the connection is made, and is
kept current as its presence changes, so a client that drops from this node and resumes on
another at once finds it, whichever node notices the drop first. Taking a session marks the
key taken: this node learns from a failed ``keep_session`` that the client resumed
elsewhere, and neither leaves for it nor starts a grace period.

Leaves only remove members this node still holds (a member that resumed on another node
moved there), and a leave that fails while the store is unreachable is retried on each tick
until the store answers. When the store loses its ephemeral state (a Redis restarted without
persistence, or flushed), the node puts back what it holds: the sessions of its connections
and their presence members, then closes its subscribers (1012) so that they attach again
and get the full member list.

A member may also be held with no connection (an MCP session, whose requests may reach any
node): :meth:`PresenceKeeper.hold` and :meth:`PresenceKeeper.release`. Its leaves are
retried and a store reset puts it back, as for a connection's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from roomcast.backends.base import ResumeSession, Store
from roomcast.protocol.errors import Unavailable
from roomcast.protocol.messages import PresenceMember, PresenceOp
from roomcast.protocol.session import Session
from roomcast.settings import Settings

from .authz import Principal
from .fanout import FanOut, Subscriber
from .secret_tokens import token_urlsafe

log = logging.getLogger("roomcast.node")

LIVE_SESSION_S = 86_400.0  # a connected session's lifetime in the store, renewed at half
RETRY_MAX = 100_000  # failed leaves kept for a retry, at most (the oldest go first)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def member_of(client_id: str, connection_id: str, data: Any) -> PresenceMember:
    return PresenceMember(
        client_id=client_id, connection_id=connection_id, data=data, timestamp=now_ms()
    )


class Client(Subscriber, Protocol):
    """A client's connection, as presence and resume see it."""

    session: Session
    resume_key: str
    principal: Principal
    replaced: bool  # another connection resumed it

    async def close(self, code: int, reason: str) -> None: ...


class PresenceHost(Protocol):
    """What the keeper needs of its node."""

    store: Store
    settings: Settings
    node_id: str
    fanout: FanOut

    @property
    def connections(self) -> Mapping[str, Client]: ...

    def connection_for(self, resume_key: str) -> Client | None: ...

    def forget(self, conn: Client) -> None: ...

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]: ...

    async def broadcast_presence(
        self, channel: str, op: PresenceOp, member: PresenceMember
    ) -> None: ...


@dataclass(slots=True)
class _Grace:
    """A dropped connection waiting for its client to resume."""

    handle: asyncio.TimerHandle
    resume_key: str
    client_id: str
    presence: dict[str, Any]


class PresenceKeeper:
    """Presence members, resume sessions and grace periods of one node's connections."""

    def __init__(self, node: PresenceHost) -> None:
        self.node = node
        self.store = node.store
        self.settings = node.settings
        self._grace: dict[str, _Grace] = {}  # connection_id → its grace period
        self._saving: dict[str, asyncio.Task[None]] = {}  # resume key → its session write
        self._dirty: set[str] = set()  # resume keys whose session changed since written
        self._saved_at: dict[str, float] = {}  # resume key → when its session was written
        self._retry: deque[tuple[str, str, str, Any, bool]] = deque(maxlen=RETRY_MAX)
        # Members held here with no connection: (client_id, connection_id) → {channel: data}
        self._held: dict[tuple[str, str], dict[str, Any]] = {}
        self._lifetime: str | None = None  # the store's data lifetime, as last seen
        self._checking = asyncio.Lock()  # held while the lifetime is read and acted on

    @property
    def node_id(self) -> str:
        return self.node.node_id

    def _live(self, conn: Client) -> ResumeSession:
        session = conn.session
        expires = time.time() + LIVE_SESSION_S
        return ResumeSession(session.client_id, session.connection_id, session.presence, expires)

    # ------------------------------------------------------------------ connect

    async def resume(
        self, principal: Principal, resume_key: str | None
    ) -> tuple[str, dict[str, Any], bool]:
        """The connection id for a new connection: ``(connection_id, presence, resumed)``.

        A valid resume key keeps the old connection id and the presence memberships that
        have not left yet, wherever the old connection was; a still-open old connection here
        is closed without leaving.
        """
        if resume_key:
            try:
                found = await self._take(principal, resume_key)
            except Unavailable as exc:
                log.debug("could not read resume session: %s", exc)
                found = self._take_local(principal, resume_key)
            if found is not None:
                return found[0], found[1], True
        return "c-" + token_urlsafe(9), {}, False

    def _take_local(
        self, principal: Principal, resume_key: str
    ) -> tuple[str, dict[str, Any]] | None:
        """The old connection, if it is still open on this node: closed without leaving."""
        conn = self.node.connection_for(resume_key)
        if conn is None or conn.principal.client_id != principal.client_id:
            return None
        presence = dict(conn.session.presence)
        conn.replaced = True
        self.node.forget(conn)
        self.node.spawn(conn.close(1000, "resumed by a new connection"))
        return conn.session.connection_id, presence

    async def _take(
        self, principal: Principal, resume_key: str
    ) -> tuple[str, dict[str, Any]] | None:
        session = await self.store.take_session(resume_key)
        if session is not None and session.client_id != principal.client_id:
            await self.store.save_session(resume_key, session)  # not theirs: put it back
            return None
        local = self._take_local(principal, resume_key)
        if local is not None:
            return local
        if session is None:
            return None
        grace = self._grace.pop(session.connection_id, None)
        if grace is not None:
            grace.handle.cancel()
        kept: dict[str, Any] = {}
        for channel, data in session.presence.items():  # held by this node from now on
            adopted = await self.store.presence_adopt(
                channel, principal.client_id, session.connection_id, self.node_id
            )
            if adopted is not None:
                kept[channel] = data
        return session.connection_id, kept

    async def connected(self, conn: Client) -> None:
        """Store the new connection's session before the client learns its resume key."""
        key = conn.resume_key
        try:
            await self.store.save_session(key, self._live(conn))
            self._saved_at[key] = time.monotonic()
        except Unavailable as exc:  # written on a later tick
            log.debug("could not store the session of %s: %s", conn.session.connection_id, exc)
            self._dirty.add(key)

    def changed(self, conn: Client) -> Awaitable[None]:
        """The connection's presence changed: keep its stored session current. Await the
        result to know it is stored (or, with the store unreachable, left for a tick)."""
        return asyncio.shield(self._schedule(conn))

    def _schedule(self, conn: Client) -> asyncio.Task[None]:
        key = conn.resume_key
        self._dirty.add(key)
        saving = self._saving.get(key)
        if saving is None:
            saving = self._saving[key] = self.node.spawn(self._keep(conn))
        return saving

    async def _keep(self, conn: Client) -> None:
        key = conn.resume_key
        try:
            while key in self._dirty and not conn.replaced:
                self._dirty.discard(key)
                if not await self.store.keep_session(key, self._live(conn)):
                    self._resumed_elsewhere(conn)
                    return
                self._saved_at[key] = time.monotonic()
        except Unavailable as exc:
            log.debug("could not store the session of %s: %s", conn.session.connection_id, exc)
            self._dirty.add(key)  # the tick writes it once the store is back
        finally:
            self._saving.pop(key, None)

    def _resumed_elsewhere(self, conn: Client) -> None:
        """Another node took this connection's session: the client is there now."""
        self._dirty.discard(conn.resume_key)
        if conn.replaced:
            return
        log.info("%s resumed on another node: closing it here", conn.session.connection_id)
        conn.replaced = True
        self.node.forget(conn)
        self.node.spawn(conn.close(1000, "resumed by a new connection"))

    # ------------------------------------------------------------------ disconnect

    async def disconnected(self, conn: Client, *, clean: bool) -> None:
        """The connection is gone. A clean close leaves at once; a drop waits
        ``presence_grace_s`` for a resume. Never raises: what the store cannot take now is
        retried on later ticks."""
        key = conn.resume_key
        saving = self._saving.get(key)
        if saving is not None:
            await asyncio.wait({saving})
        self._dirty.discard(key)
        self._saved_at.pop(key, None)
        if conn.replaced:
            return
        session = conn.session
        presence = {} if clean else dict(session.presence)
        # The session outlives the grace, so a late resume still keeps the connection id.
        window = max(self.settings.resume_window_s, self.settings.presence_grace_s + 5)
        record = ResumeSession(
            session.client_id, session.connection_id, presence, time.time() + window
        )
        try:
            if not await self.store.keep_session(key, record):
                return  # taken: the client resumed on another node, which holds it now
        except Unavailable as exc:
            log.debug("could not store the session of %s: %s", session.connection_id, exc)
        if clean:
            await self.leave(session.client_id, session.connection_id, dict(session.presence))
        elif presence:
            loop = asyncio.get_running_loop()
            handle = loop.call_later(
                self.settings.presence_grace_s, self._grace_over, session.connection_id
            )
            self._grace[session.connection_id] = _Grace(handle, key, session.client_id, presence)

    def _grace_over(self, connection_id: str) -> None:
        grace = self._grace.pop(connection_id, None)
        if grace is not None:
            # Only members this node still holds leave: one that resumed elsewhere moved.
            self.node.spawn(self.leave(grace.client_id, connection_id, grace.presence))

    async def leave(self, client_id: str, connection_id: str, presence: dict[str, Any]) -> None:
        """Remove the members this node holds for the connection and tell everyone; a leave
        the store cannot take now is retried on later ticks."""
        for channel, data in presence.items():
            await self._leave_one(channel, client_id, connection_id, data)

    async def _leave_one(
        self, channel: str, client_id: str, connection_id: str, data: Any, anywhere: bool = False
    ) -> bool:
        """One leave of the member this node holds (``anywhere``: whichever node holds it);
        False if the store could not take it (then it is retried later)."""
        try:
            removed = await self.store.presence_remove(
                channel, client_id, connection_id, holder=None if anywhere else self.node_id
            )
            if removed:
                member = member_of(client_id, connection_id, data)
                await self.node.broadcast_presence(channel, "leave", member)
        except Unavailable as exc:
            log.debug("leave of %s from %s deferred: %s", connection_id, channel, exc)
            self._retry.append((channel, client_id, connection_id, data, anywhere))
            return False
        return True

    # ------------------------------------------------------------------ held members

    async def hold(self, channel: str, client_id: str, connection_id: str, data: Any) -> None:
        """Show a member with no connection here (an MCP session: ``connection_id`` is its
        session id) in ``channel``, held by this node: taken over without a second enter if
        another node held it, else entered."""
        adopted = await self.store.presence_adopt(channel, client_id, connection_id, self.node_id)
        if adopted is None:
            member = member_of(client_id, connection_id, data)
            await self.store.presence_set(channel, member, self.node_id)
            await self.node.broadcast_presence(channel, "enter", member)
        self._held.setdefault((client_id, connection_id), {})[channel] = data

    async def release(
        self,
        client_id: str,
        connection_id: str,
        channels: Iterable[str],
        data: Any,
        *,
        anywhere: bool = False,
    ) -> None:
        """A held member leaves ``channels`` where this node holds it (``anywhere``: on
        whichever node holds it, for a session that ended). Never raises
        :class:`Unavailable`: a leave the store cannot take now is retried on later ticks."""
        key = (client_id, connection_id)
        held = self._held.get(key, {})
        for channel in channels:
            held.pop(channel, None)
            await self._leave_one(channel, client_id, connection_id, data, anywhere)
        if not held:
            self._held.pop(key, None)

    # ------------------------------------------------------------------ ticks

    async def tick(self) -> None:
        """Once per node tick, after its heartbeat: put back what a store reset lost, redo
        failed leaves, and write sessions that are due. Raises :class:`Unavailable` if the
        store is still unreachable."""
        await self.check_store()
        for _ in range(len(self._retry)):
            if not await self._leave_one(*self._retry.popleft()):
                break  # the store is unreachable again: the next tick goes on
        due = time.monotonic() - LIVE_SESSION_S / 2
        for conn in list(self.node.connections.values()):
            key = conn.resume_key
            if key in self._dirty or self._saved_at.get(key, due) <= due:
                self._schedule(conn)

    async def check_store(self) -> None:
        """Put back what a store reset lost, if the store's data lifetime changed since the
        last look: on each tick, and when a channel's log is found started over (see
        :meth:`FanOut.on_epoch`). One look at a time, so a reset is put back once. Raises
        :class:`Unavailable` if the store is unreachable."""
        async with self._checking:
            lifetime = await self.store.lifetime()
            if self._lifetime is not None and lifetime != self._lifetime:
                self._lifetime = lifetime
                await self._restore()
            self._lifetime = lifetime

    async def start(self) -> None:
        self._lifetime = await self.store.lifetime()

    async def _restore(self) -> None:
        """The store lost its ephemeral state: put back this node's sessions and members,
        then have its subscribers attach again (their serials and member lists are stale)."""
        connections = list(self.node.connections.values())
        members = sum(len(c.session.presence) for c in connections)
        members += sum(len(g.presence) for g in self._grace.values())
        members += sum(len(channels) for channels in self._held.values())
        log.warning(
            "the store's data was reset (a restart without persistence, or a flush): "
            "putting back %d sessions and %d presence members held here",
            len(connections) + len(self._grace),
            members,
        )
        for conn in connections:
            session = conn.session
            await self.store.save_session(conn.resume_key, self._live(conn))
            self._saved_at[conn.resume_key] = time.monotonic()
            for channel, data in session.presence.items():
                member = member_of(session.client_id, session.connection_id, data)
                await self.store.presence_set(channel, member, self.node_id)
        window = max(self.settings.resume_window_s, self.settings.presence_grace_s + 5)
        for connection_id, grace in list(self._grace.items()):
            record = ResumeSession(
                grace.client_id, connection_id, grace.presence, time.time() + window
            )
            await self.store.save_session(grace.resume_key, record)
            for channel, data in grace.presence.items():
                member = member_of(grace.client_id, connection_id, data)
                await self.store.presence_set(channel, member, self.node_id)
        for (client_id, connection_id), held in list(self._held.items()):
            for channel, data in held.items():
                member = member_of(client_id, connection_id, data)
                await self.store.presence_set(channel, member, self.node_id)
        self.node.fanout.reattach_all("the store was reset: attach again")

    def stop(self) -> None:
        """At shutdown: the members of dropped connections stay until another node reaps
        this node's members (its heartbeat lapses), unless their clients resume there."""
        for grace in self._grace.values():
            grace.handle.cancel()
        self._grace.clear()


__all__ = ["LIVE_SESSION_S", "PresenceKeeper"]
