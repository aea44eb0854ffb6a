"""MCP sessions of ``/mcp``: their ids, who they are, and their presence in rooms.

The SDK serves each request statelessly; the session is roomcast's, and no node holds it
alone, so a load balancer may send each request to any node:

- the ``Mcp-Session-Id`` carries the session's client id (``<random>.<base64 client
  id>``): an anonymous session keeps the client id it started with on every node, and a
  request whose credentials name another client is answered 404, as for an unknown
  session. The id grants nothing by itself: every request still carries its credentials;
- a session ended with ``DELETE`` is marked in the store (a counter with a TTL), and every
  node then answers 404 for it;
- presence: the session is a member of each room it used (``connection_id`` = the session
  id), held by the node that served its last request there (core's
  :meth:`~roomcast.core.presence.PresenceKeeper.hold`). It leaves at ``DELETE`` (on any
  node: every node adds the rooms it holds to one set in the store), when the node that
  holds it sees no request for ``idle_s``, or when that node dies (the store's node liveness
  reaps its members, as for WebSocket connections). The presence rules are core's: a leave
  the store cannot take is retried, a store reset puts the member back;
- a ``DELETE`` on one node is told to the others with a bus signal on ``meta:mcp-ended``
  (the session's digest, not its id): a node that held the session's presence forgets it
  there at once, so that a store reset does not put back the member of a session that
  ended. A node that misses the signal (its bus was down) forgets the session at its idle
  timer, as before.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from roomcast.core.authz import Principal
from roomcast.core.fanout import Framing
from roomcast.core.identity import check_client_id
from roomcast.core.node import Node
from roomcast.protocol.codec import codec_for
from roomcast.protocol.errors import BadRequest, Unavailable
from roomcast.protocol.messages import Event, SignalEvent

log = logging.getLogger("roomcast.mcp")

IDLE_S = 300.0  # a session that sends nothing for this long leaves presence
CLOSED_TTL_S = 86_400.0  # how long every node remembers that a session was ended
PRESENCE_DATA = {"via": "mcp"}
ENDED_CHANNEL = "meta:mcp-ended"  # where a DELETE is told to every node
ENDED_SIGNAL = "mcp.session-ended"


@dataclass(frozen=True, slots=True)
class McpSession:
    session_id: str
    client_id: str

    @classmethod
    def new(cls, client_id: str) -> McpSession:
        encoded = base64.urlsafe_b64encode(client_id.encode()).decode().rstrip("=")
        return cls(f"{secrets.token_urlsafe(18)}.{encoded}", client_id)

    @classmethod
    def parse(cls, session_id: str) -> McpSession | None:
        """The session an id names, or None for an id this server did not make."""
        _, dot, encoded = session_id.partition(".")
        if not dot or len(session_id) > 400:
            return None
        try:
            client_id = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            check_client_id(client_id)
        except (binascii.Error, UnicodeDecodeError, ValueError, BadRequest):
            return None
        return cls(session_id, client_id)

    @property
    def digest(self) -> str:
        """Names the session without its id (which carries its client id)."""
        return hashlib.sha256(self.session_id.encode()).hexdigest()[:40]


def signals_in(frame: bytes, name: str) -> Iterator[dict[str, Any]]:
    """The data of each signal called ``name`` that a server sent (``client_id`` null: a
    client's signal on the same channel carries its own) in a JSON ``frame`` from the
    fan-out."""
    try:
        message = json.loads(frame)
    except ValueError:
        return
    for item in message if isinstance(message, list) else [message]:
        if not isinstance(item, dict) or item.get("client_id") is not None:
            continue
        data = item.get("data")
        if item.get("name") == name and isinstance(data, dict):
            yield data


class SignalListener:
    """A fan-out subscriber that hands the signals called ``name`` of its channels to
    ``on_signal``; it reads no events."""

    def __init__(self, name: str, on_signal: Callable[[str, dict[str, Any]], None]) -> None:
        self.name = name
        self.on_signal = on_signal
        self.last_sent = time.monotonic()

    @property
    def codec(self) -> Framing:
        return codec_for("json")

    def deliver(self, channel: str, events: Sequence[Event], frames: Sequence[bytes]) -> None:
        pass

    def deliver_ephemeral(self, channel: str, frame: bytes) -> None:
        for data in signals_in(frame, self.name):
            self.on_signal(channel, data)

    def flush(self) -> None:
        pass

    def send_heartbeat(self) -> None:
        self.last_sent = time.monotonic()

    def reset(self, reason: str) -> None:
        pass


@dataclass(slots=True)
class _Held:
    """A session's rooms whose presence this node holds, and its idle timer."""

    session: McpSession
    rooms: set[str] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None


class McpSessions:
    """The sessions of one node: ended ones (through the store) and presence."""

    def __init__(self, node: Node, idle_s: float = IDLE_S) -> None:
        self.node = node
        self.idle_s = idle_s
        self._held: dict[str, _Held] = {}  # by session id
        self._by_digest: dict[str, str] = {}  # the session ids of _held, by digest
        self._ended = SignalListener(ENDED_SIGNAL, self._ended_elsewhere)
        self._listening = False

    @staticmethod
    def _closed_key(session: McpSession) -> str:
        return f"mcp-closed:{session.session_id}"

    @staticmethod
    def _rooms_key(session: McpSession) -> str:
        return f"mcp-rooms:{session.session_id}"

    async def is_closed(self, session: McpSession) -> bool:
        return await self.node.store.incr_counter(self._closed_key(session), 0, CLOSED_TTL_S) > 0

    def touched(self, session: McpSession) -> None:
        """A request of ``session`` here: its presence here lasts ``idle_s`` more."""
        held = self._held.get(session.session_id)
        if held is None:
            return
        if held.timer is not None:
            held.timer.cancel()
        loop = asyncio.get_running_loop()
        held.timer = loop.call_later(self.idle_s, self._idle, session)

    async def enter(self, session: McpSession, principal: Principal, room: str) -> None:
        """Show ``session`` in ``room``'s presence, held by this node (when its capability
        allows presence there; a tool works without it)."""
        node = self.node
        if not principal.capability.allows("presence", room):
            return
        if not self._listening:  # from the first session held here
            node.fanout.subscribe(self._ended, ENDED_CHANNEL)
            await node.store.bus.subscribe(ENDED_CHANNEL)
            self._listening = True
        held = self._held.get(session.session_id)
        if held is None:
            held = self._held[session.session_id] = _Held(session)
            self._by_digest[session.digest] = session.session_id
        await node.presence_keeper.hold(room, session.client_id, session.session_id, PRESENCE_DATA)
        if room not in held.rooms:
            # Every node adds the rooms it holds to the one set, so that a DELETE on any
            # node finds them all (held here once the store has it: a failed write is tried
            # again at the next request).
            await node.store.change_set(
                self._rooms_key(session), room, present=True, ttl_s=CLOSED_TTL_S
            )
            held.rooms.add(room)
        if self._held.get(session.session_id) is not held:
            # the session ended meanwhile (a DELETE here or on another node): the leaves
            # went before this room was held, so it leaves now
            await self._leave(session, [room], anywhere=False)
            return
        self.touched(session)

    async def close(self, session: McpSession) -> None:
        """``DELETE``: the session ends on every node and leaves every room it was in."""
        node = self.node
        await node.store.incr_counter(self._closed_key(session), 1, CLOSED_TTL_S)
        rooms = await node.store.set_members(self._rooms_key(session))
        held = self._forget(session.session_id)
        if held is not None:
            rooms |= held.rooms
        for room in sorted(rooms):
            await self._leave(session, [room], anywhere=True)
            await node.store.change_set(
                self._rooms_key(session), room, present=False, ttl_s=CLOSED_TTL_S
            )
        ended = SignalEvent(
            channel=ENDED_CHANNEL,
            client_id=None,
            name=ENDED_SIGNAL,
            data={"session": session.digest},
        )
        try:
            await node.store.bus.publish_signal(ended)
        except Unavailable as exc:  # the session has ended; other nodes forget it when idle
            log.warning("could not tell other nodes that MCP session ended: %s", exc)

    def _forget(self, session_id: str) -> _Held | None:
        """This node holds ``session_id``'s presence no more (its timer stopped)."""
        held = self._held.pop(session_id, None)
        if held is not None:
            self._by_digest.pop(held.session.digest, None)
            if held.timer is not None:
                held.timer.cancel()
        return held

    def _idle(self, session: McpSession) -> None:
        held = self._forget(session.session_id)
        if held is not None:
            self.node.spawn(self._leave_all(session, held.rooms))

    def _ended_elsewhere(self, channel: str, data: dict[str, Any]) -> None:
        """Another node ended a session (its ``DELETE`` took the members out of the store):
        what this node held of it is forgotten, and its leaves here find nothing to do."""
        digest = data.get("session")
        session_id = self._by_digest.get(digest) if isinstance(digest, str) else None
        held = None if session_id is None else self._forget(session_id)
        if held is not None:
            log.info("MCP session %s ended on another node: its presence here ends", session_id)
            self.node.spawn(self._leave_all(held.session, held.rooms))

    async def _leave_all(self, session: McpSession, rooms: set[str]) -> None:
        try:
            await self._leave(session, sorted(rooms), anywhere=False)
        except Exception:  # the members stay until this node's liveness lapses
            log.exception("could not end the presence of MCP session %s", session.session_id)

    async def _leave(self, session: McpSession, rooms: list[str], *, anywhere: bool) -> None:
        await self.node.presence_keeper.release(
            session.client_id, session.session_id, rooms, PRESENCE_DATA, anywhere=anywhere
        )

    def stop(self) -> None:
        for session_id in list(self._held):
            self._forget(session_id)
        if self._listening:
            self.node.fanout.unsubscribe(self._ended, ENDED_CHANNEL)
            self._listening = False


__all__ = [
    "ENDED_CHANNEL",
    "ENDED_SIGNAL",
    "IDLE_S",
    "McpSession",
    "McpSessions",
    "SignalListener",
    "signals_in",
]
