"""The subscriber core: what every transport does to send a client its channels.

One :class:`SubscriberCore` holds a client's outbound queue of already-encoded messages
and the rules for it, whatever carries the bytes (a WebSocket, an SSE response, and every
later transport):

- **delivery**: live events pass the channel's :class:`~roomcast.protocol.session.Attachment`
  (held back while its snapshot is read, deduplicated by serial afterwards);
- **batching**: everything queued in one turn of the event loop goes out together, written
  at once when the transport can take it, else by a send task that exists only while the
  transport is backed up;
- **the slow-consumer rule**: past ``outbound_queue`` live messages (or held ones behind a
  long replay) the subscriber is closed with 4008 and resumes from its last serial;
- **replay pacing**: after ``attached``, the events since ``from_serial`` are read a page
  at a time, as the client drains them, then the held live events follow;
- **token expiry**: at the token's ``exp`` (plus the leeway) a 40100 error goes out, then
  the close (4001);
- **reset and close**: a channel whose log started over ends the subscriber (1012) so its
  client attaches again.

A transport supplies a :class:`Transport` (write now if possible, write and wait, close),
a :class:`~roomcast.core.fanout.Framing` (how one message and a batch are framed), and
overrides the few hooks where its framing differs (:meth:`SubscriberCore.head_frames`,
:meth:`SubscriberCore.expired_frame`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Protocol

from roomcast.protocol import messages as m
from roomcast.protocol.codec import take_batch
from roomcast.protocol.errors import (
    CLOSE_AUTH,
    CLOSE_SERVICE_RESTART,
    CLOSE_SLOW_CONSUMER,
    RoomcastError,
)
from roomcast.protocol.session import Attachment

from .authz import Principal, authorize
from .fanout import AttachResult, FanOut, Framing
from .identity import LEEWAY_S

log = logging.getLogger("roomcast.subscriber")

MAX_FRAME_MESSAGES = 512
MAX_FRAME_BYTES = 256 * 1024


class Transport(Protocol):
    """What a subscriber needs from whatever carries its bytes."""

    def send_now(self, frame: bytes) -> bool:
        """Write ``frame`` at once if the transport can take it; False (nothing sent) if not."""
        ...

    async def send(self, frame: bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class SubscriberCore:
    """A bounded outbound queue with the delivery, replay and slow-consumer rules."""

    __slots__ = (
        "__weakref__",
        "_drain",
        "_expiry",
        "_flush_pending",
        "_limit",
        "_out",
        "_send_task",
        "attachments",
        "close_code",
        "closed",
        "codec",
        "fanout",
        "last_sent",
        "transport",
    )

    def __init__(
        self,
        fanout: FanOut,
        transport: Transport,
        codec: Framing,
        attachments: dict[str, Attachment],
    ) -> None:
        self.fanout = fanout
        self.transport = transport
        self.codec = codec
        self.attachments = attachments  # channel → attachment
        self.closed = False
        self.close_code: int | None = None
        self.last_sent = time.monotonic()
        self._limit = fanout.settings.outbound_queue
        self._out: list[bytes] = []
        self._flush_pending = False
        # Tasks and events exist only while there is work: an idle subscriber holds none,
        # which keeps thousands of idle connections cheap.
        self._send_task: asyncio.Task[None] | None = None
        self._drain: asyncio.Event | None = None
        self._expiry: asyncio.TimerHandle | None = None

    def describe(self) -> str:
        """Who this is, for log lines."""
        return type(self).__name__

    # ------------------------------------------------------------------ lifecycle

    def expire_at(self, exp: float | None) -> None:
        """Close with 4001 (after an ``error`` 40100) once the token's ``exp`` (seconds since
        the epoch) is over the leeway past, unless it is renewed (called again) first."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if exp is None or self.closed:
            return
        delay = max(0.0, exp + LEEWAY_S - time.time())
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(delay, lambda: self.fanout.spawn(self._expire()))

    def expired_frame(self) -> bytes:
        """The message that tells the client its token expired."""
        return self.codec.encode(m.ErrorReply(code=40100, message="token expired"))

    async def _expire(self) -> None:
        self._expiry = None
        if self.closed:
            return
        self.push(self.expired_frame())
        self.flush()
        self.closed = True  # nothing more is queued: the error goes out, then the close
        task = self._send_task
        if task is not None:
            await asyncio.wait({task})
        await self.close(CLOSE_AUTH, "token expired")

    async def stop(self) -> None:
        """The transport is gone: stop the timers and tasks of this subscriber."""
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        task = self._send_task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def close(self, code: int, reason: str) -> None:
        self.closed = True
        if self.close_code is None:
            self.close_code = code
            try:
                await self.transport.close(code, reason)
            except Exception:  # the transport may already be gone
                log.debug("close of %s failed", self.describe(), exc_info=True)

    def reset(self, reason: str) -> None:
        """The log of a channel here started over: close for the client to attach again."""
        self.fanout.spawn(self.close(CLOSE_SERVICE_RESTART, reason))

    # ------------------------------------------------------------------ outbound

    def push(self, frame: bytes) -> None:
        """Queue a reply. Replies are bounded by the requests in flight, not by the limit."""
        if not self.closed:
            self._out.append(frame)
            self._schedule()

    def push_many(self, frames: Sequence[bytes]) -> None:
        """Queue a bounded batch (a replay) without counting it as a backlog."""
        if frames and not self.closed:
            self._out.extend(frames)
            self._schedule()

    def push_live(self, frame: bytes) -> None:
        """Queue a live message; past ``outbound_queue`` the subscriber is a slow consumer."""
        if self.closed:
            return
        self._out.append(frame)
        if len(self._out) > self._limit:
            self._drop_slow_consumer()
            return
        self._schedule()

    def _schedule(self) -> None:
        # Everything queued in this turn of the event loop goes out together, in one frame.
        if not self._flush_pending:
            self._flush_pending = True
            self.fanout.flush_soon(self)

    def flush(self) -> None:
        """Write what is queued now if the transport takes it, else leave it to the send task."""
        self._flush_pending = False
        if self._send_task is not None or self.closed:
            return
        while self._out:
            batch = self._take_batch()
            if not self.transport.send_now(self.codec.join(batch)):
                self._out[:0] = batch
                self._send_task = asyncio.create_task(self._send_loop())
                return
            self.last_sent = time.monotonic()
        if self._drain is not None:
            self._drain.set()

    def _drop_slow_consumer(self) -> None:
        self.fanout.stats.slow_consumers += 1
        self._out.clear()
        self.closed = True  # nothing more is queued; the close goes out next
        log.warning(
            "closing slow consumer %s: more than %d messages queued",
            self.describe(),
            self._limit,
        )
        self.fanout.spawn(
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer: resume from your last serial")
        )

    async def _send_loop(self) -> None:
        """The slow path: awaits the transport while it is backed up (or has no direct
        path), until the queue is empty."""
        try:
            while self._out:
                batch = self._take_batch()
                await self.transport.send(self.codec.join(batch))
                self.last_sent = time.monotonic()
                if len(self._out) <= MAX_FRAME_MESSAGES and self._drain is not None:
                    self._drain.set()
        except Exception as exc:  # the peer went away: its transport's reader ends it
            log.debug("send to %s failed: %r", self.describe(), exc)
            self.closed = True
            self._out.clear()
            if self._drain is not None:
                self._drain.set()
            self.transport_lost()
        finally:
            self._send_task = None

    def transport_lost(self) -> None:
        """A send failed; the default waits for the transport's reader to notice."""

    def _take_batch(self) -> list[bytes]:
        return take_batch(self._out, MAX_FRAME_MESSAGES, MAX_FRAME_BYTES)

    def send_heartbeat(self) -> None:
        self.push_live(self.codec.encode(m.Heartbeat()))

    # ------------------------------------------------------------------ fan-out side

    def deliver(self, channel: str, events: Sequence[m.Event], frames: Sequence[bytes]) -> None:
        """Live events of an attached channel (called by the node's fan-out)."""
        attachment = self.attachments.get(channel)
        if attachment is None or self.closed:
            return
        for event, frame in zip(events, frames, strict=True):
            out = attachment.offer(event.serial, frame)
            if out is not None:
                self.push_live(out)
            elif attachment.held_count > self._limit:
                self._drop_slow_consumer()  # live events pile up behind a long replay
                return

    def deliver_ephemeral(self, channel: str, frame: bytes) -> None:
        attachment = self.attachments.get(channel)
        if attachment is not None:
            out = attachment.offer(None, frame)
            if out is not None:
                self.push_live(out)

    # ------------------------------------------------------------------ attach

    def admit(self, channel: str) -> None:
        """Raise if this subscriber may not take one more channel; the default has no limit."""

    def begin_attach(self, principal: Principal, channel: str) -> Attachment:
        """Subscribe to ``channel`` (``subscribe`` capability) before its snapshot is read,
        so no live event can fall in between: the attachment holds live events back until
        :meth:`finish_attach` has sent the snapshot and the replay."""
        authorize(principal, "subscribe", channel)
        self.admit(channel)
        attachment = self.attachments[channel] = Attachment(channel)
        self.fanout.subscribe(self, channel)
        return attachment

    def head_frames(self, result: AttachResult) -> list[bytes]:
        """What opens an attach: ``attached``, and ``discontinuity`` if the resume failed."""
        attached = result.attached
        frames = [self.codec.encode(attached)]
        if result.discontinuity is not None:
            gone = m.Discontinuity(channel=attached.channel, reason=result.discontinuity)
            frames.append(self.codec.encode(gone))
        return frames

    async def finish_attach(self, attachment: Attachment, result: AttachResult) -> None:
        """Send the head, the replay (paged, as the client drains it), then go live."""
        channel = result.attached.channel
        encode = self.codec.encode
        head = self.head_frames(result)
        self.push(head[0])
        if self.attachments.get(channel) is not attachment:
            return  # detached, or attached again, while the snapshot was read
        self.push_many(head[1:])
        page, until = result.replay, result.attached.serial
        self.push_many([encode(event) for event in page])
        while page and page[-1].serial < until:
            await self._drained()
            if self.attachments.get(channel) is not attachment or self.closed:
                return
            try:
                page = await self.fanout.replay_page(channel, page[-1].serial, until)
            except RoomcastError as exc:
                self.push(encode(m.Discontinuity(channel=channel, reason=exc.message)))
                break
            self.push_many([encode(event) for event in page])
        self.push_many(attachment.go_live(until))

    async def _drained(self) -> None:
        """Wait until the outbound queue is nearly empty (replay pacing)."""
        while len(self._out) > MAX_FRAME_MESSAGES and not self.closed:
            if self._drain is None:
                self._drain = asyncio.Event()
            self._drain.clear()
            await self._drain.wait()


__all__ = ["MAX_FRAME_BYTES", "MAX_FRAME_MESSAGES", "SubscriberCore", "Transport"]
