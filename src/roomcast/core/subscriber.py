"""The subscriber core: what every transport does to send a client its channels.

One :class:`SubscriberCore` holds a client's outbound queue of already-encoded messages
and the rules for it, whatever carries the bytes (a WebSocket, an SSE response, and every
later transport):

- **delivery**: live events pass the channel's :class:`~roomcast.protocol.session.Attachment`
  (held back while its snapshot is read, deduplicated by serial afterwards);
- **batching**: live events for a subscriber with nothing queued are written at once, in
  one frame; everything queued in one turn of the event loop goes out together, written
  at once when the transport can take it, else by a send task that exists only while the
  transport is backed up;
- **the slow-consumer rule**: past ``outbound_queue`` live messages (or held ones behind a
  long replay) the subscriber is closed with 4008 and resumes from its last serial;
- **the byte budget**: replies and replays wait while more than ``outbound_bytes`` are
  queued (a connection reads no more requests meanwhile, see
  :meth:`SubscriberCore.room`), so a client that does not read holds at most the budget
  and one reply; one over the budget that takes nothing for ``outbound_stall_s`` is closed
  with 4008;
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
from collections.abc import Iterable, Sequence
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


def _fits_one_frame(frames: list[bytes]) -> bool:
    return len(frames) == 1 or (
        len(frames) <= MAX_FRAME_MESSAGES and sum(map(len, frames)) <= MAX_FRAME_BYTES
    )


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
        "_budget",
        "_bytes",
        "_drain",
        "_expiry",
        "_flush_pending",
        "_limit",
        "_out",
        "_send_task",
        "_stall",
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
        self._budget = fanout.settings.outbound_bytes
        self._out: list[bytes] = []
        self._bytes = 0  # the length of everything queued, and of the batch being sent
        self._flush_pending = False
        # Tasks and events exist only while there is work: an idle subscriber holds none,
        # which keeps thousands of idle connections cheap.
        self._send_task: asyncio.Task[None] | None = None
        self._drain: asyncio.Event | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._stall: asyncio.TimerHandle | None = None  # armed while over the byte budget

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
        self._discard()
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
        """Queue a reply. Whoever produces replies waits for :meth:`room` first, so they
        pass the byte budget by one reply at most."""
        if not self.closed:
            self._out.append(frame)
            self._bytes += len(frame)
            self._schedule()

    def push_many(self, frames: Sequence[bytes]) -> None:
        """Queue a bounded batch (the head of an attach, the held live events)."""
        if frames and not self.closed:
            self._out.extend(frames)
            self._bytes += sum(map(len, frames))
            self._schedule()

    def push_live(self, frame: bytes) -> None:
        """Queue a live message; past ``outbound_queue`` the subscriber is a slow consumer."""
        if self.closed:
            return
        self._out.append(frame)
        self._bytes += len(frame)
        if len(self._out) > self._limit:
            self._drop_slow_consumer(f"more than {self._limit} messages queued")
            return
        self._schedule()

    def _schedule(self) -> None:
        # Everything queued in this turn of the event loop goes out together, in one frame.
        if not self._flush_pending:
            self._flush_pending = True
            self.fanout.flush_soon(self)
        if self._bytes > self._budget and self._stall is None:
            stall_s = self.fanout.settings.outbound_stall_s
            self._stall = asyncio.get_running_loop().call_later(stall_s, self._check_stall)

    @property
    def queued_bytes(self) -> int:
        """Bytes queued for the client, and in the frame being written to it."""
        return self._bytes

    @property
    def over_budget(self) -> bool:
        """More than ``outbound_bytes`` are queued: replies and replays wait."""
        return self._bytes > self._budget

    async def room(self) -> None:
        """Wait until the queue is within the byte budget (or the subscriber is closed)."""
        while self._bytes > self._budget and not self.closed:
            await self._wait_drain()

    async def _wait_drain(self) -> None:
        if self._drain is None:
            self._drain = asyncio.Event()
        self._drain.clear()
        await self._drain.wait()

    def _check_stall(self) -> None:
        """Over the budget since ``outbound_stall_s`` ago: close if nothing was taken since."""
        self._stall = None
        if self.closed or self._bytes <= self._budget:
            return
        stall_s = self.fanout.settings.outbound_stall_s
        idle = time.monotonic() - self.last_sent
        if idle >= stall_s:
            self._drop_slow_consumer(
                f"more than {self._budget} bytes queued and nothing taken for {stall_s:g} s"
            )
        else:
            self._stall = asyncio.get_running_loop().call_later(stall_s - idle, self._check_stall)

    def _discard(self) -> None:
        """Drop everything queued and wake whoever waits for room (they see ``closed``)."""
        self._out.clear()
        self._bytes = 0
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self._drain is not None:
            self._drain.set()

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
            self._sent(batch)
        if self._drain is not None:
            self._drain.set()

    def _drop_slow_consumer(self, why: str) -> None:
        self.fanout.stats.slow_consumers += 1
        self.closed = True  # nothing more is queued; the close goes out next
        self._discard()
        log.warning("closing slow consumer %s: %s", self.describe(), why)
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
                self._sent(batch)
                if self._drain is not None and (
                    len(self._out) <= MAX_FRAME_MESSAGES or self._bytes <= self._budget
                ):
                    self._drain.set()  # the waiters check what they wait for
        except Exception as exc:  # the peer went away: its transport's reader ends it
            log.debug("send to %s failed: %r", self.describe(), exc)
            self.closed = True
            self._discard()
            self.transport_lost()
        finally:
            self._send_task = None

    def transport_lost(self) -> None:
        """A send failed; the default waits for the transport's reader to notice."""

    def _take_batch(self) -> list[bytes]:
        return take_batch(self._out, MAX_FRAME_MESSAGES, MAX_FRAME_BYTES)

    def _sent(self, batch: list[bytes]) -> None:
        self.last_sent = time.monotonic()
        self._bytes = max(0, self._bytes - sum(map(len, batch)))  # 0 once discarded

    def send_heartbeat(self) -> None:
        # An idle connection's one write per period (its ping goes with it): at once.
        frame = self.codec.heartbeat
        if not self.closed and not self._send_at_once(frame):
            self.push_live(frame)

    # ------------------------------------------------------------------ fan-out side

    def deliver(self, channel: str, events: Sequence[m.Event], frames: Sequence[bytes]) -> None:
        """Live events of an attached channel (called by the node's fan-out).

        With nothing queued before them they are written at once, in one frame, when the
        transport takes them: the common case of a fan-out, where a queue, a flush at the
        end of the turn and a batch of one would cost more than the write. Anything queued
        goes first, so nothing overtakes it."""
        attachment = self.attachments.get(channel)
        if attachment is None or self.closed:
            return
        out: list[bytes] = []
        types = attachment.types
        for event, frame in zip(events, frames, strict=True):
            if types is not None and event.type not in types:
                continue
            live = attachment.offer(event.serial, frame)
            if live is not None:
                out.append(live)
            elif attachment.held_count > self._limit:
                # live events pile up behind a long replay
                self._drop_slow_consumer(f"more than {self._limit} live messages held")
                return
        if not out:
            return
        if _fits_one_frame(out) and self._send_at_once(
            out[0] if len(out) == 1 else self.codec.join(out)
        ):
            return
        for live in out:
            self.push_live(live)

    def _send_at_once(self, frame: bytes) -> bool:
        """Write ``frame`` now if nothing is queued before it and the transport takes it."""
        if self._out or self._send_task is not None or not self.transport.send_now(frame):
            return False
        self.last_sent = time.monotonic()
        return True

    def deliver_ephemeral(self, channel: str, frame: bytes) -> None:
        attachment = self.attachments.get(channel)
        if attachment is not None:
            out = attachment.offer(None, frame)
            if out is not None:
                self.push_live(out)

    # ------------------------------------------------------------------ attach

    def admit(self, channel: str) -> None:
        """Raise if this subscriber may not take one more channel; the default has no limit."""

    def begin_attach(
        self, principal: Principal, channel: str, types: Iterable[str] | None = None
    ) -> Attachment:
        """Subscribe to ``channel`` (``subscribe`` capability) before its snapshot is read,
        so no live event can fall in between: the attachment holds live events back until
        :meth:`finish_attach` has sent the snapshot and the replay. ``types`` limits the
        events sent to those types."""
        authorize(principal, "subscribe", channel)
        self.admit(channel)
        wanted = None if types is None else frozenset(types)
        attachment = self.attachments[channel] = Attachment(channel, types=wanted)
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
        head = self.head_frames(result)
        self.push(head[0])
        if self.attachments.get(channel) is not attachment:
            return  # detached, or attached again, while the snapshot was read
        self.push_many(head[1:])
        page, until = result.replay, result.attached.serial
        if not await self._replay(attachment, page):
            return
        while page and page[-1].serial < until:
            await self._drained()
            if self.attachments.get(channel) is not attachment or self.closed:
                return
            try:
                page = await self.fanout.replay_page(channel, page[-1].serial, until)
            except RoomcastError as exc:
                self.push(self.codec.encode(m.Discontinuity(channel=channel, reason=exc.message)))
                break
            if not await self._replay(attachment, page):
                return
        self.push_many(attachment.go_live(until))

    async def _replay(self, attachment: Attachment, events: Sequence[m.Event]) -> bool:
        """Queue a page of the replay, waiting for room whenever it is over the byte
        budget; False if the attachment ended meanwhile."""
        encode = self.codec.encode
        for event in events:
            if not attachment.wants(event.type):
                continue
            self.push(encode(event))
            if self._bytes > self._budget:
                await self.room()
                if self.attachments.get(attachment.channel) is not attachment or self.closed:
                    return False
        return True

    async def _drained(self) -> None:
        """Wait until the outbound queue is nearly empty (replay pacing)."""
        while (len(self._out) > MAX_FRAME_MESSAGES or self.over_budget) and not self.closed:
            await self._wait_drain()


__all__ = ["MAX_FRAME_BYTES", "MAX_FRAME_MESSAGES", "SubscriberCore", "Transport"]
