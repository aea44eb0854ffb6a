"""One client connection: ordered replies to pipelined requests, and a bounded outbound queue.

Requests are dispatched as they are read, without waiting for earlier ones to be stored, so
many publishes share one storage commit (group commit). Their replies still go out in request
order. Outbound messages are queued as already-encoded bytes (each event is encoded once per
format, for every subscriber) and sent in batches: when a backlog forms, one frame carries
many messages. A connection whose backlog passes ``outbound_queue`` is a slow consumer and is
closed with 4008; it resumes from its last serial.

Replies count against the connection's byte budget (``outbound_bytes``): over it, the
connection reads no more requests and answers no more until its queue drains, so TCP
backpressure reaches the client. Reads whose replies can be large (``history``, the
snapshot of an ``attach``) start only when their turn to be answered comes and there is
room, so a client that pipelines many of them holds one read at a time, not all of them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from roomcast.backends.base import Appended
from roomcast.protocol import messages as m
from roomcast.protocol.codec import Codec, RequestError, check_frame_kind
from roomcast.protocol.errors import (
    CLOSE_ABNORMAL,
    CLOSE_AUTH,
    CLOSE_SERVICE_RESTART,
    CLOSE_SLOW_CONSUMER,
    BadRequest,
    ProtocolViolation,
    RateLimited,
    RoomcastError,
    StreamCancelled,
)
from roomcast.protocol.session import Attachment, Session, TokenBucket

from .authz import Principal
from .fanout import AttachResult
from .identity import Identity
from .secret_tokens import token_urlsafe
from .subscriber import SubscriberCore, Transport

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("roomcast.connection")

MAX_IN_FLIGHT = 4096

# The close codes that mean the peer vanished without a close (TCP loss, missed pings), or
# that this server is going away (1012: uvicorn's shutdown puts it in the disconnect).
DROPPED = frozenset({CLOSE_ABNORMAL, 1011, CLOSE_SERVICE_RESTART})
# Closes by this server after which the client resumes: its presence waits for it.
RESUMABLE = frozenset({CLOSE_SERVICE_RESTART, CLOSE_SLOW_CONSUMER, CLOSE_AUTH})

Read = TypeVar("Read")
Frame = tuple[bytes | str, bool] | int
"""What a transport read: ``(data, is_text)``, or the close code once it ended."""

Pending = tuple[int | None, str | None, "Awaitable[Any] | m.Reply | _Deferred | None"]


class Connection(SubscriberCore):
    """Protocol handling for one client, independent of the socket library: requests in,
    replies in request order; delivery is the :class:`SubscriberCore`'s."""

    codec: Codec  # a WebSocket's codec also decodes its requests

    __slots__ = (
        "_append_bucket",
        "_appends",
        "_bucket",
        "_ephemeral_bucket",
        "_replies",
        "_reply_space",
        "_reply_task",
        "_waiting_on",
        "node",
        "principal",
        "replaced",
        "resume_key",
        "session",
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
        self.session = Session(principal.client_id, connection_id, presence=presence)
        super().__init__(node.fanout, transport, codec, self.session.attachments)
        self.node = node
        self.principal = principal
        self.resume_key = "r-" + token_urlsafe(18)
        self.replaced = False
        self._bucket = TokenBucket(settings.publish_rate, settings.publish_burst)
        append_rate = settings.append_rate if settings.publish_rate > 0 else 0
        self._append_bucket = TokenBucket(append_rate, append_rate * 4)
        ephemeral_rate = settings.ephemeral_rate if settings.publish_rate > 0 else 0
        self._ephemeral_bucket = TokenBucket(ephemeral_rate, settings.ephemeral_burst)
        self._replies: deque[Pending] | None = None
        # Appends queued for a reply, by id of their future → (channel, msg_serial); and the
        # append whose ok the reply loop waits for now.
        self._appends: dict[int, tuple[str, int]] = {}
        self._waiting_on: tuple[str, int] | None = None
        self._reply_task: asyncio.Task[None] | None = None
        self._reply_space: asyncio.Event | None = None

    def describe(self) -> str:
        return f"{self.session.connection_id} ({self.session.client_id})"

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
                        "ephemeral_rate": self._ephemeral_bucket.rate,
                        "ephemeral_burst": settings.ephemeral_burst,
                        "outbound_queue": settings.outbound_queue,
                        "outbound_bytes": settings.outbound_bytes,
                        "history_limit": settings.max_history_limit,
                        "max_objects_bytes": settings.max_objects_bytes,
                        "max_channels": self.channel_limit,
                        "activity_hint_s": settings.activity_hint_s,
                        "rollup_ms": settings.rollup_ms,
                    },
                    capability=self.principal.capability.to_json(),
                )
            )
        )

    async def finish(self, *, clean: bool) -> None:
        """The socket is gone: stop the loops and let the node handle presence and resume."""
        task = self._reply_task
        if task is not None:
            task.cancel()
        await self.stop()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        await self.node.disconnect(self, clean=clean)

    # ------------------------------------------------------------------ inbound

    async def receive(self, data: bytes | str, *, is_text: bool) -> None:
        """Handle one frame. Raises ProtocolViolation for a frame that must close.

        Returns only once there is room for its requests' replies: a connection over its
        byte budget is paused (its transport reads nothing more from the client)."""
        check_frame_kind(self.codec, is_text=is_text)
        size = len(data)
        for item in self.codec.decode(data):
            if self.over_budget:
                await self.room()
            if self.closed:
                return  # closed as a slow consumer (or gone) while it waited
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
        # This connection's appends still in a rollup window are stored first: a message
        # published after them (a tool call shown in its place in an answer) follows them.
        if self._appends:  # none on a connection that does not stream
            for key in set(self._appends.values()):
                self.node.rollup.flush_now(*key)
        return self.node.submit_publish(self.principal, req, frame_size=size)

    @property
    def channel_limit(self) -> int:
        """How many channels this connection may attach: more with an API key (agents
        attach every room they serve)."""
        settings = self.node.settings
        if self.principal.kind == "key":
            return settings.max_channels_per_key_connection
        return settings.max_channels_per_connection

    def admit(self, channel: str) -> None:
        limit = self.channel_limit
        if channel not in self.session.attachments and len(self.session.attachments) >= limit:
            raise RateLimited(f"at most {limit} channels may be attached on one connection")

    def _on_attach(self, req: m.Attach, size: int) -> _Deferred:
        # Subscribed now, in request order; the snapshot is read when its turn comes.
        attachment = self.begin_attach(self.principal, req.channel, req.types)
        return _Deferred(lambda: self._attach(req, attachment))

    async def _attach(self, req: m.Attach, attachment: Attachment) -> _Attaching:
        return _Attaching(attachment, await self.node.attach(self.principal, req))

    def _on_detach(self, req: m.Detach, size: int) -> Awaitable[Any]:
        if self.session.detach(req.channel) is not None:
            self.fanout.unsubscribe(self, req.channel)
        return asyncio.ensure_future(self._detach(req))

    def _on_history(self, req: m.History, size: int) -> _Deferred:
        principal = self.principal
        return _Deferred(lambda: self.node.history(principal, req))

    def _on_presence(self, req: m.PresenceRequest, size: int) -> Awaitable[Any]:
        self._check_ephemeral_rate()
        return asyncio.ensure_future(self.node.presence(self.principal, self, req, frame_size=size))

    def _on_signal(self, req: m.Signal, size: int) -> Awaitable[Any]:
        self._check_ephemeral_rate()
        return asyncio.ensure_future(self.node.signal(self.principal, req, frame_size=size))

    def _on_update(self, req: m.Update, size: int) -> Awaitable[Any]:
        self._check_rate()
        return asyncio.ensure_future(self.node.update(self.principal, req, frame_size=size))

    def _on_delete(self, req: m.Delete, size: int) -> Awaitable[Any]:
        self._check_rate()
        return asyncio.ensure_future(self.node.delete(self.principal, req))

    def _on_append(self, req: m.Append, size: int) -> Awaitable[Any]:
        _take(self._append_bucket, "append")
        future = asyncio.ensure_future(
            self.node.submit_append(self.principal, req, frame_size=size)
        )
        self._appends[id(future)] = (req.channel, req.msg_serial)
        return future

    def _on_cancel(self, req: m.Cancel, size: int) -> Awaitable[Any]:
        self._check_rate()
        return asyncio.ensure_future(self.node.cancel(self.principal, req))

    def _on_annotate(self, req: m.Annotate, size: int) -> Awaitable[Any]:
        self._check_rate()
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
        identity = self.node.identities.renew(self.principal, req.token)
        self.principal = identity.principal
        self.expire_at(identity.expires_at)
        return m.Ok(ref=m.ref_of(req.ref))

    def _on_object(self, req: m.ObjectRequest, size: int) -> Awaitable[Any]:
        self._check_rate()
        return asyncio.ensure_future(
            self.node.object_op(self.principal, req.channel, req.op, frame_size=size)
        )

    def _check_rate(self) -> None:
        """Every stored change that fans out: publish, update, delete, cancel, reactions,
        object operations (appends have a bucket of their own)."""
        _take(self._bucket, "publish")

    def _check_ephemeral_rate(self) -> None:
        """Signals (typing included) and presence: not stored, but each goes to everyone."""
        _take(self._ephemeral_bucket, "signal and presence")

    async def _detach(self, req: m.Detach) -> m.Detached:
        await self.node.leave_channel(self, req.channel)
        return m.Detached(ref=m.ref_of(req.ref), channel=req.channel)

    async def _reply_loop(self) -> None:
        """Answers the requests in order, until none is waiting."""
        replies = self._replies
        try:
            while replies:
                if self.over_budget:
                    await self.room()  # no more replies until the client drains some
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
        if isinstance(item, _Deferred):
            if self.closed:
                return  # nobody to read it
            item = item.start()
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
            await self.finish_attach(result.attachment, result.result)
        elif isinstance(result, Appended):
            ok = self.node.acknowledge(channel or "", result, created=True)
            self.push(self.codec.encode(msgspec.structs.replace(ok, ref=m.ref_of(ref))))
        elif isinstance(result, m.Ok):
            self.push(self.codec.encode(msgspec.structs.replace(result, ref=m.ref_of(ref))))
        elif result is not None:
            self.push(self.codec.encode(result))


async def open_connection(
    node: Node, transport: Transport, codec: Codec, identity: Identity, resume: str | None
) -> Connection:
    """A new connection of ``identity`` (resuming the session of ``resume`` if it can), told
    ``connected``: what every transport does once it has the caller's credentials.

    Raises:
        RateLimited: The client already has ``max_connections_per_client`` here.
    """
    principal = identity.principal
    connection_id, presence, resumed = await node.connect(principal, resume)
    node.check_client_connections(principal.client_id)
    conn = Connection(node, transport, codec, principal, connection_id, presence)
    await node.register(conn)
    conn.start(resumed)
    conn.expire_at(identity.expires_at)
    return conn


async def serve(
    conn: Connection, receive: Callable[[], Awaitable[Read]], frame_of: Callable[[Read], Frame]
) -> None:
    """Hand ``conn`` every frame its transport reads (``frame_of(await receive())``) until
    the peer goes, then finish it: a clean close ends its presence at once, a lost
    connection (or a close after which the client resumes) leaves it for the grace period.

    ``receive`` is the transport's own read, awaited here directly: an idle connection
    waits in as few coroutine frames as possible (memory per connection)."""
    clean = True
    try:
        while True:
            frame = frame_of(await receive())
            if isinstance(frame, int):
                clean = frame not in DROPPED
                break
            await conn.receive(frame[0], is_text=frame[1])
    except ProtocolViolation as exc:
        log.info("closing %s: %s", conn.session.connection_id, exc.reason)
        await conn.close(exc.close_code, exc.reason)
    finally:
        if conn.close_code is not None and conn.close_code in RESUMABLE:
            clean = False  # the server closed it for the client to resume
        await conn.finish(clean=clean)


@dataclass(slots=True)
class _Deferred:
    """A read that starts when the reply loop comes to it (see the module's docstring)."""

    start: Callable[[], Awaitable[Any]]


def _take(bucket: TokenBucket, what: str) -> None:
    if not bucket.take(time.monotonic()):
        raise RateLimited(f"{what} rate limit: {bucket.rate:g}/s, burst {bucket.burst:g}")


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
        cancelled_by=exc.cancelled_by if isinstance(exc, StreamCancelled) else msgspec.UNSET,
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
