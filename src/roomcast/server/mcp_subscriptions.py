"""``resources/subscribe`` of ``/mcp``: which room transcripts a session watches, and the
``GET /mcp`` stream that tells it when one changed (``notifications/resources/updated``).

The subscribing POST and the GET stream may reach different nodes, so the set is not
kept in one node's memory: each change is saved in the store (a set per session, read
when a stream opens) and sent as a bus signal on the session's own control channel
(applied by the node that holds its stream, whichever it is). That node watches the
rooms through the node's fan-out, as ``wait_for_messages`` does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from roomcast.core.authz import Principal
from roomcast.core.fanout import Framing
from roomcast.core.node import Node
from roomcast.protocol.codec import codec_for
from roomcast.protocol.messages import Event, SignalEvent

from .mcp_sessions import CLOSED_TTL_S, McpSession, signals_in

SIGNAL = "mcp.subscriptions"


def control_channel(session: McpSession) -> str:
    """The session's own channel for subscription changes (unguessable, never listed)."""
    return f"meta:mcp-{session.digest}"


class SubscriptionSet:
    """The rooms a session subscribed to, in the store, with a signal at each change.

    Each change adds or removes one room as one step of the store (``change_set``), so two
    changes of one session that reach two nodes at the same moment both hold."""

    def __init__(self, node: Node) -> None:
        self.node = node

    @staticmethod
    def _key(session: McpSession) -> str:
        return f"mcp-subs:{session.session_id}"

    async def rooms(self, session: McpSession) -> set[str]:
        return await self.node.store.set_members(self._key(session))

    async def change(self, session: McpSession, room: str, *, subscribed: bool) -> None:
        store = self.node.store
        await store.change_set(self._key(session), room, present=subscribed, ttl_s=CLOSED_TTL_S)
        signal = SignalEvent(
            channel=control_channel(session),
            client_id=None,
            name=SIGNAL,
            data={"room": room, "subscribed": subscribed},
        )
        await store.bus.publish_signal(signal)


class UpdateStream:
    """A fan-out subscriber for one GET stream: the rooms changed since it last sent."""

    def __init__(self, control: str) -> None:
        self.control = control
        self.changed: set[str] = set()
        self.wake = asyncio.Event()
        self.last_sent = time.monotonic()
        self.moves: list[tuple[str, bool]] = []  # subscription changes to apply
        self.watched: set[str] = set()

    async def watch(self, node: Node, principal: Principal, room: str) -> None:
        """Watch ``room`` (when the caller may read it)."""
        if room not in self.watched and principal.capability.allows("subscribe", room):
            self.watched.add(room)
            node.fanout.subscribe(self, room)
            await node.store.bus.subscribe(room)

    def unwatch(self, node: Node, room: str) -> None:
        if room in self.watched:
            self.watched.discard(room)
            node.fanout.unsubscribe(self, room)

    @property
    def codec(self) -> Framing:
        return codec_for("json")

    def deliver(self, channel: str, events: Sequence[Event], frames: Sequence[bytes]) -> None:
        if channel != self.control and events:
            self.changed.add(channel)
            self.wake.set()

    def deliver_ephemeral(self, channel: str, frame: bytes) -> None:
        if channel != self.control:
            return
        for data in signals_in(frame, SIGNAL):
            room, subscribed = data.get("room"), data.get("subscribed")
            if isinstance(room, str) and isinstance(subscribed, bool):
                self.moves.append((room, subscribed))
                self.wake.set()

    def flush(self) -> None:
        pass

    def send_heartbeat(self) -> None:
        self.last_sent = time.monotonic()

    def reset(self, reason: str) -> None:
        self.wake.set()


__all__ = ["SIGNAL", "SubscriptionSet", "UpdateStream", "control_channel"]
