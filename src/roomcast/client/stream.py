"""Streaming answers: one message that grows by appends (docs/protocol.md §3 "Streams").

:meth:`Channel.stream <roomcast.client.Channel.stream>` returns a :class:`MessageStream`::

    async with channel.stream(name="text", extras={"reply_to": 12}) as answer:
        async for token in model.tokens():
            await answer.append(token)

Entering publishes a ``streaming`` message; leaving ends it ``complete``, or ``failed`` (with
``extras.failure``) if the block raised, or ``cancelled`` if someone cancelled it. The stream
listens for ``cancel`` events on its message (it attaches the channel itself if nobody did),
so an agent stops within one token: :attr:`MessageStream.cancelled` is set, and the next
:meth:`MessageStream.append` raises :class:`~roomcast.client.Cancelled`, which the ``async
with`` block swallows after ending the message ``cancelled``. The author stops its own
stream with :meth:`MessageStream.cancel`: the message then ends ``cancelled`` with the author
as ``cancelled_by``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from types import TracebackType
from typing import Any, Protocol

from roomcast.protocol.errors import Conflict, Forbidden, StreamCancelled
from roomcast.protocol.messages import Event, Status

from .errors import Cancelled
from .session import ChannelState
from .subscription import EventCallback, Subscription

MAX_IN_FLIGHT = 256  # appends sent and not yet acknowledged, at most
# Fragments held for the rollup window are joined into one append of at most this many
# characters (well under any sensible ``max_message_bytes``).
MAX_JOINED_CHARS = 1024


class StreamingChannel(Protocol):
    """What a stream needs from its channel (a :class:`~roomcast.client.Channel` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> ChannelState: ...

    @property
    def has_subscriptions(self) -> bool: ...

    @property
    def rollup_s(self) -> float: ...

    def subscribe(self, callback: EventCallback) -> Subscription: ...

    async def detach(self) -> None: ...

    async def publish(
        self,
        data: Any,
        *,
        name: str | None = None,
        id: str | None = None,
        extras: dict[str, Any] | None = None,
        streaming: bool = False,
    ) -> int: ...

    def send_append(self, msg_serial: int, data: str) -> asyncio.Future[int | None]: ...

    async def update(
        self,
        msg_serial: int,
        *,
        extras: dict[str, Any] | None = None,
        status: Status | None = None,
    ) -> int | None: ...

    async def cancel(self, msg_serial: int, reason: str | None = None) -> int | None: ...


class MessageStream:
    """One streamed message; made by :meth:`Channel.stream`, used with ``async with``.

    Attributes:
        channel: The channel it is published on.
        msg_serial: The message's serial (``None`` until the block is entered).
        cancelled: Set when a ``cancel`` of this message arrives.
        cancelled_by: The ``client_id`` that cancelled it, if one did.
        text: What the server stored of this stream's fragments so far.
        status: How it ended (``complete``, ``failed``, ``cancelled``), or ``streaming``.
    """

    def __init__(
        self,
        channel: StreamingChannel,
        *,
        name: str = "text",
        extras: dict[str, Any] | None = None,
        id: str | None = None,
    ) -> None:
        self.channel = channel
        self.name = name
        self.extras = dict(extras or {})
        self.id = id
        self.msg_serial: int | None = None
        self.cancelled = asyncio.Event()
        self.cancelled_by: str | None = None
        self.text = ""
        self.status: Status = "streaming"
        self._subscription: Subscription | None = None
        self._in_flight: deque[tuple[asyncio.Future[int | None], str]] = deque()
        self._held: list[str] = []  # fragments waiting for the unacknowledged append's ok
        self._held_chars = 0
        self._window: asyncio.TimerHandle | None = None  # the rollup window since the last append
        self._sent_at = 0.0  # loop time of the last append: the stream's beat
        self._failure: BaseException | None = None
        self._attached_here = False

    def __repr__(self) -> str:
        return f"<MessageStream {self.channel.name} #{self.msg_serial} {self.status}>"

    async def __aenter__(self) -> MessageStream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None and self.msg_serial is not None:
            try:
                await self.flush()  # a fragment refused late fails the block here
            except Cancelled:
                pass
            except Exception as late:
                await self.__aexit__(type(late), late, late.__traceback__)
                raise
        own_cancel = isinstance(exc, Cancelled) and exc.msg_serial == self.msg_serial
        if self.cancelled.is_set() or own_cancel:
            await self.end("cancelled")
        elif exc is None:
            await self.end("complete")
        else:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if isinstance(exc, asyncio.CancelledError):
                reason = "the task was cancelled"
            await self.end("failed", extras={"failure": reason})
        return own_cancel

    async def start(self, text: str = "") -> int:
        """Listen for cancels, then publish the ``streaming`` message, ``text`` its first
        fragment (it shows with the message, one round trip before an append would);
        returns its serial.

        ``async with`` calls it for you.
        """
        channel = self.channel
        self._attached_here = channel.state not in ("attached", "attaching")
        self._subscription = channel.subscribe(self._on_event)
        try:
            try:
                await self._subscription  # attached: a cancel can no longer slip by
            except Forbidden:
                # No `subscribe` here: a cancel is then learned from the refused append.
                await self._stop_listening()
            self.msg_serial = await channel.publish(
                text, name=self.name, id=self.id, extras=self.extras, streaming=True
            )
            self.text = text
        except BaseException:
            await self._stop_listening()
            raise
        return self.msg_serial

    async def append(self, text: str) -> None:
        """Append a fragment, without waiting for it to be stored; an error comes out of a
        later :meth:`append` or of :meth:`flush` / the end of the block.

        The server's rollup window (``connected.limits.rollup_ms``) is kept here, at the
        source: a fragment goes at once when the stream's previous append went a window ago
        or more and has its ``ok``. Fragments that come sooner are held, and go as one
        append (up to ``MAX_JOINED_CHARS``) when the window ends and that ``ok`` is in. So
        each append is one event and one frame to each member; on a connection that
        carries many streams (an agent's) no reply waits behind a window; and when the
        server is loaded its ``ok`` comes later, more tokens share an append, and the load
        eases instead of growing; what is held then goes at the stream's next window
        boundary, so that streams answered in one commit do not all send again at once.
        At most ``MAX_IN_FLIGHT`` appends wait for their ``ok``.

        Raises:
            Cancelled: The message was cancelled; stop producing and leave the block.
            RoomcastError: The server refused an earlier fragment (``TooLarge`` past
                ``max_stream_bytes``, ...).
        """
        msg_serial = self._started()
        self._check(msg_serial)
        if not self._waiting():
            self._send(msg_serial, text)
            return
        self._held.append(text)
        self._held_chars += len(text)
        if self._held_chars < MAX_JOINED_CHARS:
            return
        while len(self._in_flight) >= MAX_IN_FLIGHT:
            await asyncio.wait({self._in_flight[0][0]})
            self._check(msg_serial)
        self._send_held()

    def _waiting(self) -> bool:
        """Whether a fragment must be held: the window is open or an ``ok`` is due."""
        return self._window is not None or bool(
            self._in_flight and not self._in_flight[-1][0].done()
        )

    def _send(self, msg_serial: int, text: str) -> None:
        future = self.channel.send_append(msg_serial, text)
        self._in_flight.append((future, text))
        future.add_done_callback(self._acked)
        window_s = self.channel.rollup_s
        if window_s > 0:
            if self._window is not None:
                self._window.cancel()
            loop = asyncio.get_running_loop()
            self._sent_at = loop.time()
            self._window = loop.call_later(window_s, self._window_end)

    def _send_held(self) -> None:
        """Send what is held as one append (nothing once the stream was refused)."""
        if not self._held or self.msg_serial is None:
            return
        text = "".join(self._held)
        self._held.clear()
        self._held_chars = 0
        if self._failure is None and not self.cancelled.is_set():
            self._send(self.msg_serial, text)

    def _window_end(self) -> None:
        self._window = None
        if not self._waiting():
            self._send_held()

    def _acked(self, future: asyncio.Future[int | None]) -> None:
        """The newest append's ``ok`` (or error) came: what was held may go now."""
        if not self._in_flight or future is not self._in_flight[-1][0]:
            return
        if future.cancelled() or future.exception() is not None:
            self._collect()  # the failure shows at the next append
        if not self._waiting():
            self._send_on_beat()

    def _send_on_beat(self) -> None:
        """After an ``ok`` that came once the window had ended, what is held goes at the
        stream's next window boundary (counted from its last append), not at once. A loaded
        server answers the appends of many streams in one commit: sent as their ``ok``
        came, they would go again in one turn and be committed together again, and the
        streams would move in lockstep, in bursts that hold up every write behind them."""
        window_s = self.channel.rollup_s
        if self._held and window_s > 0:
            loop = asyncio.get_running_loop()
            wait = -(loop.time() - self._sent_at) % window_s
            if wait > window_s / 50:
                self._window = loop.call_later(wait, self._window_end)
                return
        self._send_held()

    def stored_text(self) -> str | None:
        """The message's text as the server stores it: known once every append sent has
        its reply (None while one has not)."""
        self._collect()
        return None if self._in_flight else self.text

    def send_now(self) -> None:
        """Send the fragments held for the rollup window now, without waiting for
        anything: before something that must follow them live, such as a message that
        shows a tool call in its place in the answer. :meth:`flush` and the end of the
        stream do it too."""
        if self._window is not None:
            self._window.cancel()
            self._window = None
        self._send_held()

    async def cancel(self, reason: str | None = None) -> None:
        """Stop the stream yourself (the person at the keyboard pressed Ctrl-C, say).

        It sends a ``cancel`` of the message, so the stored message records you in
        ``cancelled_by``, and sets :attr:`cancelled`: the next :meth:`append` raises
        :class:`~roomcast.client.Cancelled`, and leaving the ``async with`` block ends the
        message ``cancelled``. Without the ``cancel-own`` capability no ``cancel`` is
        stored, and the message still ends ``cancelled``.
        """
        msg_serial = self._started()
        if self.status != "streaming" or self.cancelled.is_set():
            return
        with contextlib.suppress(Forbidden, Conflict):  # not allowed, or already ended
            await self.channel.cancel(msg_serial, reason)
        self._mark_cancelled(None)  # the cancel event, which may come later, names who

    async def flush(self) -> None:
        """Wait until every fragment sent is stored; raise the first refusal if any.

        Raises:
            Cancelled: The message was cancelled.
            RoomcastError: The server refused a fragment.
        """
        msg_serial = self._started()
        self.send_now()
        if self._in_flight:
            await asyncio.wait({future for future, _ in self._in_flight})
        self._check(msg_serial)

    def _collect(self) -> None:
        """Take finished appends off the queue, noting the first failure."""
        while self._in_flight and self._in_flight[0][0].done():
            done, text = self._in_flight.popleft()
            error = done.exception() if not done.cancelled() else None
            if error is None:
                self.text += text
                continue
            if self._failure is not None:
                continue
            if isinstance(error, StreamCancelled):
                self._mark_cancelled(error.cancelled_by)
            else:
                self._failure = error

    def _check(self, msg_serial: int) -> None:
        self._collect()
        if self.cancelled.is_set():
            raise Cancelled(self.channel.name, msg_serial, self.cancelled_by)
        if self._failure is not None:
            raise self._failure

    async def end(
        self, status: Status = "complete", *, extras: dict[str, Any] | None = None
    ) -> None:
        """End the message with ``status`` (and an ``extras`` patch); ``async with`` calls
        it for you. A message the server already ended stays as it is."""
        msg_serial = self._started()
        try:
            self.send_now()
            if self._in_flight:  # every fragment is stored before the end
                await asyncio.wait({future for future, _ in self._in_flight})
                self._collect()
            if self.status == "streaming":
                with contextlib.suppress(Conflict):  # the server ended it first
                    await self.channel.update(msg_serial, status=status, extras=extras)
                self.status = status
        finally:
            await self._stop_listening()

    def _started(self) -> int:
        if self.msg_serial is None:
            raise RuntimeError("the stream is not started: use `async with channel.stream()`")
        return self.msg_serial

    def _on_event(self, event: Event) -> None:
        if event.msg_serial != self.msg_serial or self.msg_serial is None:
            return
        if event.type == "cancel":
            self._mark_cancelled(event.client_id)
        elif event.type == "update" and event.status == "cancelled":
            self._mark_cancelled(self.cancelled_by)

    def _mark_cancelled(self, who: str | None) -> None:
        if self.cancelled_by is None:
            self.cancelled_by = who
        self.cancelled.set()

    async def _stop_listening(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return
        await subscription.aclose()
        channel = self.channel
        if self._attached_here and not channel.has_subscriptions:
            with contextlib.suppress(Exception):
                await channel.detach()


__all__ = ["MessageStream"]
