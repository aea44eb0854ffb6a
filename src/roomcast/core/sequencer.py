"""The write rules of a node: every publish and change of every transport comes here.

:class:`Sequencer` authorizes a write, enforces the size limits and the own/any rules, and
hands the event to the Store, which gives it its serial. Transports pass the request as
they decoded it, with the size of the frame it came in when they know it: a frame within
``max_message_bytes`` cannot hold a payload over it, which spares the hot path a
measurement. :class:`~roomcast.core.node.Node` is a Sequencer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec
from msgspec import UNSET

from roomcast.backends.base import Appended, Store
from roomcast.protocol import objects as live
from roomcast.protocol.errors import BadRequest, Forbidden, NotFound, TooLarge, Unavailable
from roomcast.protocol.http import MAX_BATCH
from roomcast.protocol.messages import (
    Append,
    Cancel,
    Delete,
    Event,
    EventType,
    MapRemove,
    MapSet,
    Message,
    ObjectOp,
    Ok,
    Publish,
    Update,
)
from roomcast.settings import Settings

from .activity import ActivityHints
from .authz import Operation, Principal, authorize
from .streams import AppendRollup, StreamSweeper

log = logging.getLogger("roomcast.node")

META_CHANNELS = "meta:channels"

_Change = Literal["update", "delete", "cancel"]
# A change's capability on anyone's message, and on one's own.
_CHANGE_OPERATIONS: dict[str, tuple[Operation, Operation]] = {
    "update": ("update-any", "update-own"),
    "delete": ("delete-any", "delete-own"),
    "cancel": ("cancel-any", "cancel-own"),
}


class Sequencer:
    """Publishes, changes, annotations and object operations, with their rules."""

    store: Store
    settings: Settings
    rollup: AppendRollup
    sweeper: StreamSweeper
    spawn: Callable[[Awaitable[Any]], Any]
    hints: ActivityHints

    def __init__(self) -> None:
        self._announced: set[str] = set()
        self._unannounced: dict[str, Event] = {}  # kept through a store outage

    # ------------------------------------------------------------------ sizes

    def check_message_size(
        self, data: Any, extras: Any, *, what: str = "message", frame_size: int | None = None
    ) -> None:
        """Raise :class:`TooLarge` when ``data`` + ``extras`` (as JSON) exceed
        ``max_message_bytes``; nothing to measure when the whole frame is within it."""
        limit = self.settings.max_message_bytes
        if frame_size is not None and frame_size <= limit:
            return
        size = len(msgspec.json.encode(data)) + (len(msgspec.json.encode(extras)) if extras else 0)
        if size > limit:
            raise TooLarge(f"{what} is {size} bytes, over the {limit} byte limit")

    # ------------------------------------------------------------------ events

    async def append(self, event: Event, idempotency_key: str | None = None) -> Ok:
        """Sequence one event; announce the channel on ``meta:channels`` at its first event."""
        result = await self.store.append(event, idempotency_key=idempotency_key)
        return self.acknowledge(event.channel, result)

    def acknowledge(self, channel: str, result: Appended, *, created: bool = False) -> Ok:
        """The ``ok`` for a stored event; the channel's first event announces it. A new
        message (``created``) hints that the channel is active."""
        if result.serial == 1 and not result.duplicate:
            self._announce(channel)
        if created and result.serial is not None and not result.duplicate:
            self.hints.hint(channel, result.serial - 1)
            if result.event is not None:
                self.rollup.created(result.event)
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
        self.spawn(self._announce_quietly(channel, event))

    async def _announce_quietly(self, channel: str, event: Event) -> None:
        try:
            await self.store.append(event, idempotency_key=f"channel.created:{channel}")
        except Unavailable as exc:  # kept, and tried again until the store takes it
            self._unannounced[channel] = event
            log.warning("could not announce %s on %s yet: %s", channel, META_CHANNELS, exc)
        except Exception:
            log.exception("could not announce %s on %s", channel, META_CHANNELS)

    async def retry_announcements(self) -> None:
        """Store the announcements that a store outage held back, oldest first; raise
        :class:`Unavailable` (and keep the rest) while the outage lasts."""
        for channel, event in list(self._unannounced.items()):
            await self.store.append(event, idempotency_key=f"channel.created:{channel}")
            del self._unannounced[channel]
            log.info("announced %s on %s once the store took writes again", channel, META_CHANNELS)

    @staticmethod
    def new_event(channel: str, type_: EventType, client_id: str | None, **fields: Any) -> Event:
        """An event to sequence; the store assigns ``serial`` and ``timestamp``."""
        return Event(
            channel=channel, serial=0, type=type_, client_id=client_id, timestamp=0, **fields
        )

    # ------------------------------------------------------------------ publish

    async def publish(self, principal: Principal, req: Publish) -> Ok:
        return self.acknowledge(
            req.channel, await self.submit_publish(principal, req), created=True
        )

    def submit_publish(
        self, principal: Principal, req: Publish, *, frame_size: int | None = None
    ) -> Awaitable[Appended]:
        """Authorize and queue a publish at once (no task): pipelined publishes keep their
        order and share commits. Await the result, then :meth:`acknowledge` it."""
        self.check_message_size(req.data, req.extras, frame_size=frame_size)
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
        self, principal: Principal, channel: str, requests: list[Publish]
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
        fresh = [r.serial for r in results if not r.duplicate and r.serial is not None]
        if fresh:
            self.hints.hint(channel, min(fresh) - 1)
        return [s for s in serials if s is not None]

    # ------------------------------------------------------------------ changes

    async def append_to(
        self, principal: Principal, req: Append, *, frame_size: int | None = None
    ) -> Ok:
        """An append (author only), merged per ``rollup_ms`` window in submission order."""
        return await self.submit_append(principal, req, frame_size=frame_size)

    def submit_append(
        self, principal: Principal, req: Append, *, frame_size: int | None = None
    ) -> Awaitable[Ok]:
        """Check and queue an append at once (before this returns, so a request that came
        after it on a connection is sequenced after it); await the result for its ``ok``."""
        self.check_message_size(req.data, None, frame_size=frame_size)
        authorize(principal, "publish", req.channel)
        stored = self.rollup.submit(principal.client_id, req.channel, req.msg_serial, req.data)
        return self._acknowledged(req.channel, stored)

    async def _acknowledged(self, channel: str, stored: Awaitable[Appended]) -> Ok:
        return self.acknowledge(channel, await stored)

    async def update(
        self, principal: Principal, req: Update, *, frame_size: int | None = None
    ) -> Ok:
        """Change a message's data, extras (merged shallowly) or status (own/any rules)."""
        data = None if req.data is UNSET else req.data
        extras = None if req.extras is UNSET else req.extras
        self.check_message_size(data, extras, frame_size=frame_size)
        await self._check_change(principal, req.channel, req.msg_serial, "update")
        fields = {
            k: v
            for k, v in (("data", req.data), ("extras", req.extras), ("status", req.status))
            if v is not UNSET
        }
        return await self._change(principal, req.channel, req.msg_serial, "update", fields)

    async def delete(self, principal: Principal, req: Delete) -> Ok:
        await self._check_change(principal, req.channel, req.msg_serial, "delete")
        return await self._change(principal, req.channel, req.msg_serial, "delete", {})

    async def cancel(self, principal: Principal, req: Cancel) -> Ok:
        """Cancel a streaming message: its author's, or an answer to your message."""
        await self._check_change(principal, req.channel, req.msg_serial, "cancel")
        fields = {"reason": req.reason}
        return await self._change(principal, req.channel, req.msg_serial, "cancel", fields)

    async def _check_change(
        self, principal: Principal, channel: str, msg_serial: int, verb: _Change
    ) -> None:
        message = await self.store.get_message(channel, msg_serial)
        any_op, own_op = _CHANGE_OPERATIONS[verb]
        if not principal.capability.allows(any_op, channel):
            authorize(principal, own_op, channel)
            if message is not None and not await self._is_own(principal, channel, message, verb):
                raise Forbidden(f"message {msg_serial} is not yours to {verb}")
        if message is None:
            raise NotFound(f"no message {msg_serial} on {channel}")

    async def _change(
        self,
        principal: Principal,
        channel: str,
        msg_serial: int,
        verb: _Change,
        fields: dict[str, Any],
    ) -> Ok:
        """Sequence a change, after the appends still pending for the message."""
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

    # ------------------------------------------------------------------ annotations, objects

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

    async def object_op(
        self,
        principal: Principal,
        channel: str,
        op: ObjectOp,
        *,
        frame_size: int | None = None,
        what: str = "message",
    ) -> Ok:
        """A live-object operation (docs/protocol.md §5): ``ok`` with its serial, and the
        new ``object_id`` for a create. Changing ``root.agents`` also needs ``agent-admin``."""
        self.check_message_size(op, None, what=what, frame_size=frame_size)
        authorize(principal, "object-publish", channel)
        if isinstance(op, MapSet | MapRemove) and await self._touches_agents(channel, op):
            authorize(principal, "agent-admin", channel)
        event = self.new_event(channel, "object", principal.client_id, op=op)
        result = await self.store.append(event)
        ok = self.acknowledge(channel, result, created=True)
        if result.event is not None and isinstance(result.event.object_id, str):
            ok = msgspec.structs.replace(ok, object_id=result.event.object_id)
        return ok

    async def _touches_agents(self, channel: str, op: MapSet | MapRemove) -> bool:
        if op.object_id == live.ROOT:
            return op.key == live.AGENTS_KEY
        root = await self.store.get_object(channel, live.ROOT)
        return live.touches_agents(op, lambda oid: root if oid == live.ROOT else None)


__all__ = ["META_CHANNELS", "Sequencer"]
