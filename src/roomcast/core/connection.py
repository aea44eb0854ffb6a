"""One client connection: ordered replies to pipelined requests, and a bounded outbound queue.

Requests are dispatched as they are read, without waiting for earlier ones to be stored, so
many publishes share one storage commit (group commit). Their replies still go out in request
order. Outbound messages are queued as already-encoded bytes (each event is encoded once per
format, for every subscriber) and sent in batches: when a backlog forms, one frame carries
many messages. A connection whose backlog passes ``outbound_queue`` is a slow consumer and is
closed with 4008; it resumes from its last serial.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from roomcast.backends.base import Appended
from roomcast.protocol import messages as m
from roomcast.protocol.codec import Codec, RequestError, check_frame_kind, take_batch
from roomcast.protocol.errors import (
    CLOSE_AUTH,
    CLOSE_SLOW_CONSUMER,
    BadRequest,
    RateLimited,
    RoomcastError,
    Unauthorized,
)
from roomcast.protocol.session import Attachment, Session, TokenBucket

from .authz import Principal, authorize
from .keys import LEEWAY_S
from .node import AttachResult, Node

log = logging.getLogger("roomcast.connection")

MAX_FRAME_MESSAGES = 512
MAX_FRAME_BYTES = 256 * 1024
MAX_IN_FLIGHT = 4096

Pending = tuple[int | None, str | None, "Awaitable[Any] | m.Reply | None"]


class Transport(Protocol):
    """What a connection needs from its socket."""

    def send_now(self, frame: bytes) -> bool:
        """Write ``frame`` at once if the socket can take it; False (nothing sent) if not."""
        ...

    async def send(self, frame: bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class Connection:
    """Protocol handling for one client, independent of the socket library."""

    __slots__ = (
        "__weakref__",
        "_append_bucket",
        "_appends",
        "_bucket",
        "_drain",
        "_expiry",
        "_flush_pending",
        "_limit",
        "_max_bytes",
        "_out",
        "_replies",
        "_reply_space",
        "_reply_task",
        "_send_task",
        "_waiting_on",
        "close_code",
        "closed",
        "codec",
        "last_sent",
        "node",
        "principal",
        "replaced",
        "resume_key",
        "session",
        "transport",
    )

    def __init__(
        self,
        node: Node,
        transport: Transport,
        codec: Codec,
        principal: Principal,
        connection_id: str,
        presence: dict[str, Any],
    ) -> None:
        settings = node.settings
        self.node = node
        self.transport = transport
        self.codec = codec
        self.principal = principal
        self.session = Session(principal.client_id, connection_id, presence=presence)
        self.resume_key = "r-" + secrets.token_urlsafe(18)
        self.replaced = False
        self.closed = False
        self.close_code: int | None = None
        self.last_sent = time.monotonic()
        self._bucket = TokenBucket(settings.publish_rate, settings.publish_burst)
        append_rate = settings.append_rate if settings.publish_rate > 0 else 0
        self._append_bucket = TokenBucket(append_rate, append_rate * 4)
        self._limit = settings.outbound_queue
        self._max_bytes = settings.max_message_bytes
        self._out: list[bytes] = []
        self._flush_pending = False
        # Tasks and events exist only while there is work: an idle connection holds none,
        # which keeps thousands of idle connections cheap.
        self._send_task: asyncio.Task[None] | None = None
        self._drain: asyncio.Event | None = None
        self._replies: deque[Pending] | None = None
        # Appends queued for a reply, by id of their future → (channel, msg_serial); and the
        # append whose ok the reply loop waits for now.
        self._appends: dict[int, tuple[str, int]] = {}
        self._waiting_on: tuple[str, int] | None = None
        self._reply_task: asyncio.Task[None] | None = None
        self._reply_space: asyncio.Event | None = None
        self._expiry: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, resumed: bool) -> None:
        """Send ``connected``."""
        settings = self.node.settings
        self.push(
            self.codec.encode(
                m.Connected(
                    connection_id=self.session.connection_id,
                    client_id=self.session.client_id,
                    resume_key=self.resume_key,
                    resumed=resumed,
                    heartbeat_s=settings.heartbeat_s,
                    limits={
                        "max_message_bytes": settings.max_message_bytes,
                        "max_stream_bytes": settings.max_stream_bytes,
                        "publish_rate": settings.publish_rate,
                        "publish_burst": settings.publish_burst,
                        "append_rate": settings.append_rate if settings.publish_rate > 0 else 0,
                        "outbound_queue": settings.outbound_queue,
                        "history_limit": settings.max_history_limit,
                        "max_objects_bytes": settings.max_objects_bytes,
                    },
                )
            )
        )

    def expire_at(self, exp: float | None) -> None:
        """Close with 4001 (after an ``error`` 40100) once the token's ``exp`` (seconds since
        the epoch) is over a second past, unless ``auth`` renews it first."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if exp is None or self.closed:
            return
        delay = max(0.0, exp + LEEWAY_S - time.time())
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(delay, lambda: self.node.spawn(self._expire()))

    async def _expire(self) -> None:
        self._expiry = None
        if self.closed:
            return
        self.push(self.codec.encode(m.ErrorReply(code=40100, message="token expired")))
        self.flush()
        self.closed = True  # nothing more is queued: the error goes out, then the close
        task = self._send_task
        if task is not None:
            await asyncio.wait({task})
        await self.close(CLOSE_AUTH, "token expired")

    async def finish(self, *, clean: bool) -> None:
        """The socket is gone: stop the loops and let the node handle presence and resume."""
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        tasks = [t for t in (self._send_task, self._reply_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.node.disconnect(self, clean=clean)

    async def close(self, code: int, reason: str) -> None:
        self.closed = True
        if self.close_code is None:
            self.close_code = code
            try:
                await self.transport.close(code, reason)
            except Exception:  # the socket may already be gone
                log.debug("close of %s failed", self.session.connection_id, exc_info=True)

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
        """Queue a live message; past ``outbound_queue`` the connection is a slow consumer."""
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
            self.node.flush_soon(self)

    def flush(self) -> None:
        """Write what is queued now if the socket takes it, else leave it to the send task."""
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
        self.node.stats.slow_consumers += 1
        self._out.clear()
        self.closed = True  # nothing more is queued; the close frame goes out next
        log.warning(
            "closing slow consumer %s (%s): more than %d messages queued",
            self.session.connection_id,
            self.session.client_id,
            self._limit,
        )
        self.node.spawn(
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer: resume from your last serial")
        )

    async def _send_loop(self) -> None:
        """The slow path: awaits the socket while it is backed up (or has no direct path),
        until the queue is empty."""
        try:
            while self._out:
                batch = self._take_batch()
                await self.transport.send(self.codec.join(batch))
                self.last_sent = time.monotonic()
                if len(self._out) <= MAX_FRAME_MESSAGES and self._drain is not None:
                    self._drain.set()
        finally:
            self._send_task = None

    def _take_batch(self) -> list[bytes]:
        return take_batch(self._out, MAX_FRAME_MESSAGES, MAX_FRAME_BYTES)

    def send_heartbeat(self) -> None:
        self.push_live(self.codec.encode(m.Heartbeat()))

    def deliver(self, channel: str, events: Sequence[m.Event], frames: Sequence[bytes]) -> None:
        """Live events of an attached channel (called by the node's fan-out)."""
        attachment = self.session.attachments.get(channel)
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
        attachment = self.session.attachments.get(channel)
        if attachment is not None:
            out = attachment.offer(None, frame)
            if out is not None:
                self.push_live(out)

    # ------------------------------------------------------------------ inbound

    async def receive(self, data: bytes | str, *, is_text: bool) -> None:
        """Handle one frame. Raises ProtocolViolation for a frame that must close."""
        check_frame_kind(self.codec, is_text=is_text)
        size = len(data)
        for item in self.codec.decode(data):
            while self._replies is not None and len(self._replies) >= MAX_IN_FLIGHT:
                if self._reply_space is None:  # pipelining is bounded
                    self._reply_space = asyncio.Event()
                self._reply_space.clear()
                await self._reply_space.wait()
            self._enqueue(self._dispatch(item, size))

    def _enqueue(self, pending: Pending) -> None:
        waiting = self._waiting_on
        if waiting is not None and self._appends.get(id(pending[2])) != waiting:
            # A request queued behind an append that waits for its rollup window: store the
            # merge now rather than keep this request waiting for the window (replies go in
            # order, so it would).
            self.node.rollup.flush_now(*waiting)
        replies = self._replies
        if replies is None:
            replies = self._replies = deque()
        replies.append(pending)
        if self._reply_task is None:
            self._reply_task = asyncio.create_task(self._reply_loop())

    def _dispatch(self, req: m.ClientRequest | RequestError, frame_size: int) -> Pending:
        """Validate and start one request; the reply is awaited in order by the reply loop."""
        if isinstance(req, RequestError):
            return (req.ref, None, _error_reply(req.ref, None, req.error))
        channel = getattr(req, "channel", None)
        try:
            return (req.ref, channel, self._start(req, frame_size))
        except RoomcastError as exc:
            return (req.ref, channel, _error_reply(req.ref, channel, exc))

    def _start(self, req: m.ClientRequest, frame_size: int) -> Awaitable[Any] | m.Reply | None:
        handler = _HANDLERS.get(type(req))
        if handler is None:
            raise BadRequest(f"unsupported action {type(req).__name__}")
        result: Awaitable[Any] | m.Reply | None = handler(self, req, frame_size)
        return result

    # Each handler checks what must be checked in request order (rate, size, and anything
    # that changes the session), then starts the store work without awaiting it.

    def _on_ping(self, req: m.Ping, size: int) -> m.Reply:
        return m.Pong(ref=m.ref_of(req.ref))

    def _on_publish(self, req: m.Publish, size: int) -> Awaitable[Any]:
        self._check_rate()
        if size > self._max_bytes:
            self._check_size(req.data, req.extras)
        return self.node.submit_publish(self.principal, req)

    def _on_attach(self, req: m.Attach, size: int) -> Awaitable[Any]:
        authorize(self.principal, "subscribe", req.channel)
        limit = self.node.settings.max_channels_per_connection
        if req.channel not in self.session.attachments and len(self.session.attachments) >= limit:
            raise RateLimited(f"at most {limit} channels may be attached on one connection")
        # Subscribe before the snapshot is read, so no live event can fall in between; the
        # attachment holds live events back until the snapshot and replay are out.
        attachment = self.session.attach(req.channel)
        self.node.subscribe(self, req.channel)
        return asyncio.ensure_future(self._attach(req, attachment))

    async def _attach(self, req: m.Attach, attachment: Attachment) -> _Attaching:
        return _Attaching(attachment, await self.node.attach(self.principal, req))

    def _on_detach(self, req: m.Detach, size: int) -> Awaitable[Any]:
        if self.session.detach(req.channel) is not None:
            self.node.unsubscribe(self, req.channel)
        return asyncio.ensure_future(self._detach(req))

    def _on_history(self, req: m.History, size: int) -> Awaitable[Any]:
        return asyncio.ensure_future(self.node.history(self.principal, req))

    def _on_presence(self, req: m.PresenceRequest, size: int) -> Awaitable[Any]:
        if size > self._max_bytes:
            self._check_size(req.data, None)
        return asyncio.ensure_future(
            self.node.presence(self.principal, self, req.channel, req.op, req.data)
        )

    def _on_signal(self, req: m.Signal, size: int) -> Awaitable[Any]:
        if size > self._max_bytes:
            self._check_size(req.data, None)
        return asyncio.ensure_future(self.node.signal(self.principal, req))

    def _on_update(self, req: m.Update, size: int) -> Awaitable[Any]:
        self._check_rate()
        if size > self._max_bytes:
            self._check_size(
                None if req.data is msgspec.UNSET else req.data,
                None if req.extras is msgspec.UNSET else req.extras,
            )
        return self._change(req)

    def _on_delete(self, req: m.Delete, size: int) -> Awaitable[Any]:
        return self._change(req)

    def _on_append(self, req: m.Append, size: int) -> Awaitable[Any]:
        if not self._append_bucket.take(time.monotonic()):
            bucket = self._append_bucket
            raise RateLimited(f"append rate limit: {bucket.rate:g}/s, burst {bucket.burst:g}")
        if size > self._max_bytes:
            self._check_size(req.data, None)
        future = self._change(req)
        self._appends[id(future)] = (req.channel, req.msg_serial)
        return future

    def _on_cancel(self, req: m.Cancel, size: int) -> Awaitable[Any]:
        return self._change(req)

    def _change(self, req: m.Append | m.Update | m.Delete | m.Cancel) -> Awaitable[Any]:
        return asyncio.ensure_future(self.node.change(self.principal, req))

    def _on_annotate(self, req: m.Annotate, size: int) -> Awaitable[Any]:
        return asyncio.ensure_future(
            self.node.annotate(self.principal, req.channel, req.msg_serial, req.name, req.op)
        )

    def _on_claim(self, req: m.Claim, size: int) -> Awaitable[Any]:
        return asyncio.ensure_future(
            self.node.claim(
                self.principal, req.channel, req.key, req.ttl_s, self.session.connection_id
            )
        )

    def _on_auth(self, req: m.Auth, size: int) -> m.Reply:
        """Renew the token: same client_id, new capability and expiry (else 40100, and the
        current token stays)."""
        claims = self.node.settings.key_ring.verify(req.token)
        if claims.client_id != self.principal.client_id:
            raise Unauthorized(
                f"the token is for {claims.client_id!r}, not {self.principal.client_id!r}"
            )
        self.principal = Principal(claims.client_id, claims.capability, "token")
        self.expire_at(claims.exp)
        return m.Ok(ref=m.ref_of(req.ref))

    def _on_object(self, req: m.ObjectRequest, size: int) -> Awaitable[Any]:
        self._check_rate()
        if size > self._max_bytes:
            self._check_size(req.op, None)
        return asyncio.ensure_future(self.node.object_op(self.principal, req.channel, req.op))

    def _check_rate(self) -> None:
        if not self._bucket.take(time.monotonic()):
            bucket = self._bucket
            raise RateLimited(f"publish rate limit: {bucket.rate:g}/s, burst {bucket.burst:g}")

    def _check_size(self, data: Any, extras: Any) -> None:
        self.node.check_message_size(data, extras)

    async def _detach(self, req: m.Detach) -> m.Detached:
        await self.node.leave_channel(self, req.channel)
        return m.Detached(ref=m.ref_of(req.ref), channel=req.channel)

    async def _reply_loop(self) -> None:
        """Answers the requests in order, until none is waiting."""
        replies = self._replies
        try:
            while replies:
                ref, channel, item = replies.popleft()
                if self._reply_space is not None:
                    self._reply_space.set()
                key = self._appends.pop(id(item), None) if self._appends else None
                if key is None:
                    await self._answer(ref, channel, item)
                    continue
                if replies and self._appends.get(id(replies[0][2])) != key:
                    self.node.rollup.flush_now(*key)
                self._waiting_on = key
                try:
                    await self._answer(ref, channel, item)
                finally:
                    self._waiting_on = None
        finally:
            self._reply_task = None
            if not replies:
                self._replies = None  # an idle connection keeps no queue

    async def _answer(self, ref: int | None, channel: str | None, item: Any) -> None:
        if item is None:
            return
        if isinstance(item, m.Reply):
            self.push(self.codec.encode(item))
            return
        try:
            result = await item
        except RoomcastError as exc:
            result = _error_reply(ref, channel, exc)
        except Exception:
            correlation_id = secrets.token_hex(8)
            log.exception("internal error (correlation id %s)", correlation_id)
            result = m.ErrorReply(
                ref=m.ref_of(ref),
                code=50000,
                message=f"internal error (correlation id {correlation_id})",
                channel=channel if channel is not None else msgspec.UNSET,
            )
        if isinstance(result, _Attaching):
            await self._finish_attach(result.attachment, result.result)
        elif isinstance(result, Appended):
            ok = self.node.acknowledge(channel or "", result)
            self.push(self.codec.encode(msgspec.structs.replace(ok, ref=m.ref_of(ref))))
        elif isinstance(result, m.Ok):
            self.push(self.codec.encode(msgspec.structs.replace(result, ref=m.ref_of(ref))))
        elif result is not None:
            self.push(self.codec.encode(result))

    async def _finish_attach(self, attachment: Attachment, result: AttachResult) -> None:
        """Send ``attached``, the replay (paged, as the client drains it), then go live."""
        channel = result.attached.channel
        encode = self.codec.encode
        self.push(encode(result.attached))
        if self.session.attachments.get(channel) is not attachment:
            return  # detached, or attached again, while the snapshot was read
        if result.discontinuity is not None:
            self.push(encode(m.Discontinuity(channel=channel, reason=result.discontinuity)))
        page, until = result.replay, result.attached.serial
        self.push_many([encode(event) for event in page])
        while page and page[-1].serial < until:
            await self._drained()
            if self.session.attachments.get(channel) is not attachment or self.closed:
                return
            try:
                page = await self.node.replay_page(channel, page[-1].serial, until)
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


@dataclass(slots=True)
class _Attaching:
    attachment: Attachment
    result: AttachResult


def _error_reply(ref: int | None, channel: str | None, exc: RoomcastError) -> m.ErrorReply:
    return m.ErrorReply(
        ref=m.ref_of(ref),
        code=exc.code,
        message=exc.message,
        channel=channel if channel is not None else msgspec.UNSET,
    )


_HANDLERS: dict[type, Any] = {
    m.Ping: Connection._on_ping,
    m.Publish: Connection._on_publish,
    m.Attach: Connection._on_attach,
    m.Detach: Connection._on_detach,
    m.History: Connection._on_history,
    m.PresenceRequest: Connection._on_presence,
    m.Signal: Connection._on_signal,
    m.Update: Connection._on_update,
    m.Delete: Connection._on_delete,
    m.Append: Connection._on_append,
    m.Cancel: Connection._on_cancel,
    m.Annotate: Connection._on_annotate,
    m.Claim: Connection._on_claim,
    m.Auth: Connection._on_auth,
    m.ObjectRequest: Connection._on_object,
}
