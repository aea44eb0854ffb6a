"""Channels: publish, attach and subscribe, history pages, and the position that makes a
reconnect lossless.

A channel's *position* (:attr:`Channel.serial`) is the last serial it delivered to its
subscriptions. Each event goes into every subscription's buffer as it is read, so the
position never runs ahead of what subscribers will see; a reconnect re-attaches from it, and
an event at or below it (a replay overlapping what was already delivered) is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from msgspec import UNSET, structs

from roomcast.protocol import messages as m
from roomcast.protocol.errors import BadRequest

from .boards import Boards
from .errors import ClientClosed, Discontinuity, error_from_reply
from .objects import LiveObjects
from .polls import Polls
from .presence import Presence
from .session import ChannelState, Session
from .stream import MessageStream
from .subscription import DiscontinuityCallback, EventCallback, Subscription

Direction = Literal["backwards", "forwards"]
SignalListener = Callable[[m.SignalEvent], object]

log = logging.getLogger("roomcast.client")

_CHANNEL = re.compile(m.CHANNEL_PATTERN)


def new_publish_id() -> str:
    """An idempotency key for a publish that was given none (so it can be re-sent safely)."""
    return "rc-" + uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """One page of :meth:`Channel.history`.

    Attributes:
        messages: The messages of the page, oldest first (docs/protocol.md §3).
        has_more: Whether there are more in the direction of the walk.
    """

    messages: list[m.Message]
    has_more: bool


class Channel:
    """One channel of a :class:`~roomcast.client.Client`; get it with
    ``client.channels.get(name)``.

    Attributes:
        name: The channel's name.
        state: ``initialized``, ``attaching`` (also while reconnecting), ``attached``,
            ``detached`` or ``failed`` (the attach was refused).
        serial: The last serial delivered to subscriptions (``None`` before the first
            attach).
        epoch: The epoch of the channel's log, as of the latest ``attached``.
        types: The event types it receives (``None``: all); set by :meth:`attach`.
        attached: The latest ``attached`` reply, without the messages of a ``rewind``
            (:meth:`attach` returns those).
        presence: Who is here: :class:`~roomcast.client.Presence`.
        objects: The channel's live objects, kept current:
            :class:`~roomcast.client.LiveObjects` (``await channel.objects.root()``).
        polls: Polls on those objects: :class:`~roomcast.client.Polls`.
        boards: Boards on those objects: :class:`~roomcast.client.Boards`.
    """

    def __init__(self, client: Session, name: str) -> None:
        self.name = name
        self.state: ChannelState = "initialized"
        self.serial: int | None = None
        self.epoch: str | None = None
        self.types: frozenset[m.EventType] | None = None
        self.attached: m.Attached | None = None
        self.presence = Presence(self, client)
        self.objects = LiveObjects(self, client)
        self.polls = Polls(self.objects, client)
        self.boards = Boards(self.objects, client)
        self._client = client
        self._subscriptions: list[Subscription] = []
        self._signal_listeners: list[SignalListener] = []
        self._waiters: list[asyncio.Future[m.Attached]] = []
        self._attach_ref: int | None = None
        self._rewind: int | None = None

    def __repr__(self) -> str:
        return f"<Channel {self.name} {self.state} serial={self.serial}>"

    # ------------------------------------------------------------------ writes

    async def publish(
        self,
        data: Any,
        *,
        name: str | None = None,
        id: str | None = None,
        extras: dict[str, Any] | None = None,
        streaming: bool = False,
    ) -> int:
        """Publish a message and return its serial once the server stored it.

        Publishing needs no attach. The publish carries an idempotency ``id``: yours, or a
        generated one (``rc-`` and 32 hex digits). If the connection drops before the
        ``ok``, the client re-sends it after reconnecting, and the server stores it once and
        answers with the first serial: a publish is never lost or duplicated by a drop.

        Args:
            data: Any JSON value (``None`` too).
            name: The message name (the server's default is ``text``).
            id: Your idempotency key; a repeat within the dedup window returns the first
                serial and stores nothing.
            extras: An object of extras (``reply_to``, ...).
            streaming: Start a streamed message (``data`` a string) that grows by
                :meth:`append` until an :meth:`update` ends it; :meth:`stream` does it all.

        Returns:
            The message's serial (its ``msg_serial``).

        Raises:
            RoomcastError: The server refused it, typed by code: ``TooLarge``,
                ``RateLimited``, ``Forbidden``, ``BadRequest``, ...
        """
        request = m.Publish(
            channel=self.name,
            data=data,
            id=id if id is not None else new_publish_id(),
            name=name if name is not None else "text",
            extras=extras,
            streaming=streaming,
        )
        reply = await self._client.call(request)
        if not isinstance(reply, m.Ok) or not isinstance(reply.serial, int):
            raise BadRequest(f"unexpected reply to publish: {reply!r}")
        return reply.serial

    def stream(
        self,
        *,
        name: str = "text",
        extras: dict[str, Any] | None = None,
        id: str | None = None,
    ) -> MessageStream:
        """A streamed message, for ``async with`` (see :class:`MessageStream`)::

            async with channel.stream(extras={"reply_to": question}) as answer:
                for token in tokens:
                    await answer.append(token)

        It ends ``complete``, ``failed`` (``extras.failure`` holds the error) if the block
        raised, or ``cancelled`` after a ``cancel``: then ``answer.cancelled`` is set and
        ``answer.append`` raises :class:`~roomcast.client.Cancelled` (the block swallows it).
        """
        return MessageStream(self, name=name, extras=extras, id=id)

    async def append(self, msg_serial: int, data: str) -> int | None:
        """Append a fragment to your streamed message; returns the serial of the event that
        holds it (appends that arrive together may share one).

        An append in flight when the connection drops is sent again after the reconnect, so
        it may apply twice; :meth:`stream` is the usual way to stream.

        Raises:
            Conflict: Not yours, not streaming any more, or cancelled (40900).
            TooLarge: The text would pass the server's ``max_stream_bytes``.
        """
        return await self._change(m.Append(channel=self.name, msg_serial=msg_serial, data=data))

    def send_append(self, msg_serial: int, data: str) -> asyncio.Future[int | None]:
        """:meth:`append` without waiting: the request goes out now (in call order) and the
        future resolves with its ``ok`` (or the error). Streams pipeline their appends this
        way, so the server can merge those that arrive within its rollup window."""
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

        def on_reply(reply: m.ServerMessage) -> None:
            if future.done():
                return
            if isinstance(reply, m.ErrorReply):
                future.set_exception(error_from_reply(reply))
            elif isinstance(reply, m.Ok):
                future.set_result(reply.serial if isinstance(reply.serial, int) else None)
            else:
                future.set_exception(BadRequest(f"unexpected reply to append: {reply!r}"))

        def on_fail(error: BaseException) -> None:
            if not future.done():
                future.set_exception(error)

        request = m.Append(channel=self.name, msg_serial=msg_serial, data=data)
        self._client.submit(request, on_reply, on_fail)
        return future

    async def update(
        self,
        msg_serial: int,
        *,
        data: Any = UNSET,
        extras: dict[str, Any] | None = None,
        status: m.Status | None = None,
    ) -> int | None:
        """Replace ``data``, merge ``extras`` (a ``None`` value removes a key) or set
        ``status`` (``complete``, ``cancelled``, ``failed`` end a stream for good).

        Returns:
            The event's serial, or ``None`` when nothing changed (a repeated final status).
        """
        request = m.Update(
            channel=self.name,
            msg_serial=msg_serial,
            data=data,
            extras=UNSET if extras is None else extras,
            status=UNSET if status is None else status,
        )
        return await self._change(request)

    async def delete(self, msg_serial: int) -> int | None:
        """Delete a message (its data becomes ``null``); ``None`` if it was deleted already."""
        return await self._change(m.Delete(channel=self.name, msg_serial=msg_serial))

    async def cancel(self, msg_serial: int, reason: str | None = None) -> int | None:
        """Ask the author of a streaming message to stop (a durable ``cancel`` event).

        Returns:
            The event's serial, or ``None`` if it was cancelled already.

        Raises:
            Conflict: The message is not streaming.
        """
        return await self._change(m.Cancel(channel=self.name, msg_serial=msg_serial, reason=reason))

    async def annotate(
        self, msg_serial: int, name: str, op: Literal["add", "remove"] = "add"
    ) -> int | None:
        """Add or remove your reaction ``name`` (an emoji or a short word) on a message.

        Returns:
            The event's serial, or ``None`` for a no-op (adding a reaction you already
            gave, removing one you did not).
        """
        request = m.Annotate(
            channel=self.name, msg_serial=msg_serial, kind="reaction", name=name, op=op
        )
        return await self._change(request)

    async def react(self, msg_serial: int, name: str, *, remove: bool = False) -> int | None:
        """:meth:`annotate` with a reaction: add it, or remove it with ``remove=True``."""
        return await self.annotate(msg_serial, name, "remove" if remove else "add")

    async def claim(self, key: str, *, ttl_s: float) -> bool:
        """Claim ``key`` on this channel for this connection until ``ttl_s`` passes.

        One connection holds a key at a time, so of several workers of one agent (which
        share a client_id) exactly one gets it. Claiming a key this connection holds
        renews it.

        Args:
            key: What is claimed (1 to 200 characters), e.g. ``answer:42``.
            ttl_s: Seconds the claim lasts, more than 0 and at most 86400.

        Returns:
            True if this connection holds the key now, False if another one holds it.

        Raises:
            RoomcastError: The server refused it, typed by code: ``Forbidden`` (no
                ``claim`` capability), ``BadRequest``, ...
        """
        reply = await self._client.call(m.Claim(channel=self.name, key=key, ttl_s=ttl_s))
        if not isinstance(reply, m.Ok) or not isinstance(reply.granted, bool):
            raise BadRequest(f"unexpected reply to claim: {reply!r}")
        return reply.granted

    async def _change(self, request: m.Request) -> int | None:
        reply = await self._client.call(request)
        if not isinstance(reply, m.Ok):
            raise BadRequest(f"unexpected reply to {type(request).__name__}: {reply!r}")
        return reply.serial if isinstance(reply.serial, int) else None

    # ------------------------------------------------------------------ attach

    async def attach(
        self,
        *,
        rewind: int | None = None,
        from_serial: int | None = None,
        types: Iterable[m.EventType] | None = None,
    ) -> m.Attached:
        """Attach (start receiving events) and return the ``attached`` reply.

        Attaching an attached channel with no arguments returns at once. With ``rewind`` or
        ``from_serial`` it attaches again. Subscriptions attach on first use, so call this
        yourself only for these options, or to read ``attached`` (``messages``, presence).

        Args:
            rewind: Include the last N messages (rolled up) in ``attached.messages``.
            from_serial: Deliver every event after this serial first (in the current epoch).
                If that is not possible, subscriptions get a :class:`Discontinuity`.
            types: Receive only events of these types, from now on and after every
                reconnect (all of them to receive everything again). Serials then jump
                over the events left out: a bot that reads whole messages leaves out
                ``append`` and gets a streamed message's text with :meth:`history` once
                its ``update`` ends it.

        Raises:
            RoomcastError: The server refused the attach (``Forbidden``, ...).
        """
        self._client.check_open()
        explicit = rewind is not None or from_serial is not None
        if types is not None:
            wanted = frozenset(types)
            kept = None if wanted >= m.EVENT_TYPES else wanted
            explicit = explicit or kept != self.types
            self.types = kept
        if self.state == "attached" and not explicit and self.attached is not None:
            return self.attached
        if explicit or self.state != "attaching":
            if from_serial is not None:
                self.serial, self.epoch = from_serial, None
            self._rewind = rewind
            self.state = "attaching"
            self._send_attach()
        future: asyncio.Future[m.Attached] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        return await future

    async def detach(self) -> None:
        """Stop receiving events and leave presence; subscriptions end (their iterators
        stop). Attaching later starts from the channel's latest serial."""
        if self.state in ("initialized", "detached"):
            return
        self.state = "detached"
        self._attach_ref = None
        self.serial = self.epoch = self.attached = None
        self.presence.reset()
        self._end(None, ClientClosed(f"{self.name} was detached"))
        if self._client.is_connected:
            await self._client.call(m.Detach(channel=self.name))

    def subscribe(
        self,
        callback: EventCallback | None = None,
        *,
        on_discontinuity: DiscontinuityCallback | None = None,
    ) -> Subscription:
        """Receive the channel's events, each exactly once and in serial order.

        Without a callback, iterate the subscription (it attaches on first use)::

            async for event in channel.subscribe():
                print(event.serial, event.client_id, event.data)

        With a callback, the channel attaches right away and calls ``callback(event)``
        (a function or a coroutine function) for each event, one at a time. ``await`` the
        result to wait for the attach (and see its errors)::

            await channel.subscribe(on_event)

        A gap that cannot be filled (the epoch changed, retention) is raised by the iterator
        as :class:`Discontinuity`, where the gap is; iterate again to go on from the new
        snapshot. A callback subscription calls ``on_discontinuity`` instead (it logs a
        warning if there is none).

        Args:
            callback: Called for each event instead of iterating.
            on_discontinuity: Called with the :class:`Discontinuity` (callback form).

        Returns:
            A :class:`Subscription`: async-iterable, awaitable, ``async with``-able;
            ``await sub.aclose()`` ends it.
        """
        subscription = Subscription(self, callback, on_discontinuity)
        self._subscriptions.append(subscription)
        subscription.start()
        return subscription

    def on_signal(self, listener: SignalListener) -> Callable[[], None]:
        """Call ``listener(signal)`` for each ``signal`` of the channel (typing indicators
        and the like, and the server's ``channel.occupied`` on ``meta:channels``) while it is
        attached. Signals are ephemeral: one sent while the channel is not attached is never
        seen, and none is in history.

        Returns:
            A function that removes the listener.
        """
        self._signal_listeners.append(listener)

        def remove() -> None:
            if listener in self._signal_listeners:
                self._signal_listeners.remove(listener)

        return remove

    # ------------------------------------------------------------------ history

    async def history(
        self,
        limit: int = 100,
        direction: Direction = "backwards",
        *,
        start: int | None = None,
    ) -> AsyncIterator[HistoryPage]:
        """Walk the channel's messages page by page (no attach needed).

        Each page holds up to ``limit`` messages, oldest first within the page::

            async for page in channel.history(limit=50):
                for message in page.messages: ...

        Args:
            limit: Messages per page, 1 to 1000.
            direction: ``backwards`` (from the newest message, pages going back in time) or
                ``forwards`` (from the oldest).
            start: Begin before this ``msg_serial`` (backwards) or after it (forwards).

        Yields:
            :class:`HistoryPage` objects, until there are no more messages.
        """
        if direction not in ("backwards", "forwards"):
            raise ValueError("direction is 'backwards' or 'forwards'")
        cursor = start
        while True:
            if direction == "backwards":
                request = m.History(channel=self.name, before=cursor, limit=limit)
            else:
                request = m.History(channel=self.name, after=cursor or 0, limit=limit)
            reply = await self._client.call(request)
            if not isinstance(reply, m.HistoryReply):
                raise BadRequest(f"unexpected reply to history: {reply!r}")
            yield HistoryPage(reply.messages, reply.has_more)
            if not reply.has_more or not reply.messages:
                return
            edge = reply.messages[0] if direction == "backwards" else reply.messages[-1]
            cursor = edge.msg_serial

    # ------------------------------------------------------------------ from the client

    def _send_attach(self) -> None:
        if not self._client.is_connected:
            return  # sent by on_link_up
        resuming = self.serial is not None
        request = m.Attach(
            channel=self.name,
            from_serial=self.serial,
            epoch=self.epoch if resuming else None,
            rewind=self._rewind,
            types=None if self.types is None else sorted(self.types),
        )
        self._attach_ref = self._client.submit(
            request, self._on_attach_reply, self._on_attach_failed, resend=False
        )

    def on_link_up(self) -> None:
        """A (new) socket is up: re-attach from the position, if attached or attaching."""
        if self.state in ("attaching", "attached"):
            self.state = "attaching"
            self._send_attach()

    def on_link_down(self) -> None:
        self._attach_ref = None
        if self.state == "attached":
            self.state = "attaching"

    def on_client_end(self, error: BaseException | None) -> None:
        """The client closed (``error`` None) or failed: end everything."""
        self._attach_ref = None
        self._end(error, error or ClientClosed("the client is closed"))

    def receive(self, message: m.ServerMessage) -> None:
        """A message for this channel, in order (from the client's reader)."""
        if isinstance(message, m.Event):
            if self.state not in ("attached", "attaching"):
                return
            if self.serial is not None and message.serial <= self.serial:
                return  # already delivered (a replay overlapping a reconnect)
            self.serial = message.serial
            self.objects.on_event(message)
            for subscription in self._subscriptions:
                subscription.push(message)
        elif isinstance(message, m.PresenceEvent):
            if self.state in ("attached", "attaching"):
                self.presence.on_event(message)
        elif isinstance(message, m.SignalEvent):
            if self.state in ("attached", "attaching"):
                self._signal(message)
        elif isinstance(message, m.Discontinuity):
            if self.state not in ("attached", "attaching"):
                return
            snapshot = self.attached.serial if self.attached is not None else self.serial or 0
            gap = Discontinuity(self.name, message.reason, self.epoch, snapshot)
            for subscription in self._subscriptions:
                subscription.push(gap)

    def _signal(self, signal: m.SignalEvent) -> None:
        for listener in list(self._signal_listeners):
            try:
                listener(signal)
            except Exception:
                log.exception("a signal listener of %s failed", self.name)

    def _on_attach_reply(self, reply: m.ServerMessage) -> None:
        if getattr(reply, "ref", None) != self._attach_ref:
            return  # superseded by a later attach or a detach
        self._attach_ref = None
        if isinstance(reply, m.Attached):
            if not reply.resumed or self.serial is None:
                # A fresh snapshot (first attach, or a gap): continue after its serial.
                self.serial = reply.serial
            self.epoch = reply.epoch
            # The rewind's messages go to attach()'s caller; kept here, they would go stale
            # and hold memory for as long as the channel is attached.
            self.attached = structs.replace(reply, messages=UNSET)
            self._rewind = None
            self.state = "attached"
            self.presence.on_attached(reply.presence)
            self.objects.on_attached(reply)
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(reply)
        elif isinstance(reply, m.ErrorReply):
            error = error_from_reply(reply)
            self.state = "failed"
            self._end(error, error)

    def _on_attach_failed(self, error: BaseException) -> None:
        self._end(error, error)

    def _end(self, subscription_error: BaseException | None, waiter_error: BaseException) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(waiter_error)
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription.finish(subscription_error)

    @property
    def has_subscriptions(self) -> bool:
        """Whether any subscription is open on this channel."""
        return bool(self._subscriptions)

    @property
    def rollup_s(self) -> float:
        """The server's rollup window, which this channel's streams keep (0: none)."""
        return self._client.rollup_s

    def remove(self, subscription: Subscription) -> None:
        """Forget a subscription (it was closed); the channel stays attached."""
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)


class Channels:
    """The client's channels by name. ``get`` makes one on first use."""

    def __init__(self, client: Session) -> None:
        self._client = client
        self._by_name: dict[str, Channel] = {}

    def get(self, name: str) -> Channel:
        """The channel called ``name`` (always the same object for a name).

        Raises:
            BadRequest: The name does not match ``^[A-Za-z0-9_.:\\-]{1,200}$``.
        """
        channel = self._by_name.get(name)
        if channel is None:
            if not _CHANNEL.fullmatch(name):
                raise BadRequest(f"bad channel name {name!r}: use 1-200 of A-Z a-z 0-9 _ . : -")
            channel = self._by_name[name] = Channel(self._client, name)
        return channel

    def find(self, name: str) -> Channel | None:
        """The channel if it was ever got, else None (does not create it)."""
        return self._by_name.get(name)

    def __iter__(self) -> Iterator[Channel]:
        return iter(list(self._by_name.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self._by_name)
