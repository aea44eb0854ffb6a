"""Presence on one channel: enter, update and leave, and the member list kept current.

The member list starts from ``attached.presence`` and follows the ``presence`` events after
it; each re-attach (after a reconnect) starts it again from the new snapshot. If this client
had entered and the server no longer lists it (the connection was not resumed, or the grace
period ran out first), it enters again with the latest data, by itself.
"""

from __future__ import annotations

import logging
from typing import Any

from roomcast.protocol import messages as m

from .session import ChannelHandle, Session

log = logging.getLogger("roomcast.client")


class Presence:
    """Who is on a channel; ``channel.presence``. Members are keyed by
    (``client_id``, ``connection_id``): one person with two tabs is two members."""

    def __init__(self, channel: ChannelHandle, client: Session) -> None:
        self.channel = channel
        self.client = client
        self._members: dict[tuple[str, str], m.PresenceMember] = {}
        self._entered = False
        self._data: Any = None
        self._in_flight = 0

    async def enter(self, data: Any = None) -> None:
        """Enter the channel's presence with ``data`` (a small JSON value).

        This attaches the channel if it is not attached: the attachment is how the client
        sees, after a reconnect, whether the server still lists it (and enters again if
        not). The membership lasts until :meth:`leave`, a detach, or the client's close."""
        await self._send("enter", data)

    async def update(self, data: Any = None) -> None:
        """Change this client's presence data (enters, and attaches, if it had not)."""
        await self._send("update", data)

    async def leave(self, data: Any = None) -> None:
        """Leave the channel's presence."""
        await self._send("leave", data)

    async def members(self) -> list[m.PresenceMember]:
        """The current members (attaches the channel first if needed).

        Returns:
            ``PresenceMember`` items (``client_id``, ``connection_id``, ``data``,
            ``timestamp``), in the order they entered as far as this client saw.
        """
        if self.channel.state != "attached":
            await self.channel.attach()
        return list(self._members.values())

    async def _send(self, op: m.PresenceOp, data: Any) -> None:
        if op != "leave" and self.channel.state not in ("attached", "attaching"):
            await self.channel.attach()
        self._entered = op != "leave"
        self._data = data
        self._in_flight += 1
        try:
            await self.client.call(m.PresenceRequest(channel=self.channel.name, op=op, data=data))
        finally:
            self._in_flight -= 1

    # ------------------------------------------------------------------ from the channel

    def on_attached(self, members: list[m.PresenceMember]) -> None:
        self._members = {(p.client_id, p.connection_id): p for p in members}
        me = (self.client.client_id or "", self.client.connection_id or "")
        if self._entered and self._in_flight == 0 and me not in self._members:
            self._reenter()

    def _reenter(self) -> None:
        log.info("roomcast client: entering %s again after a reconnect", self.channel.name)
        self._in_flight += 1

        def done(reply: object) -> None:
            self._in_flight -= 1
            if isinstance(reply, m.ErrorReply):
                log.warning("could not enter %s again: %s", self.channel.name, reply.message)

        request = m.PresenceRequest(channel=self.channel.name, op="enter", data=self._data)
        self.client.submit(request, done, done)

    def on_event(self, event: m.PresenceEvent) -> None:
        key = (event.client_id, event.connection_id)
        if event.op == "leave":
            self._members.pop(key, None)
        else:
            self._members[key] = m.PresenceMember(
                client_id=event.client_id,
                connection_id=event.connection_id,
                data=event.data,
                timestamp=event.timestamp,
            )

    def reset(self) -> None:
        """Detached: the server left our presence and stopped sending changes."""
        self._members = {}
        self._entered = False
        self._data = None
