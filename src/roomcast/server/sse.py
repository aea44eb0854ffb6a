"""``GET /v1/channels/{channel}/events``: one channel as Server-Sent Events (docs/protocol.md §7).

An :class:`EventStream` is a subscriber of the node's fan-out, as a WebSocket connection
is, and attaches the same way: subscribe first, then read the snapshot, holding live
events back (:class:`~roomcast.protocol.session.Attachment`) until the replay is out, so
nothing is missed or sent twice. What goes out:

- ``event: attached`` first, with the ``attached`` JSON (epoch, serial S, presence, and
  ``messages`` with ``?rewind=``). Its ``id`` is where the stream resumes from if it drops
  before the next event: ``from_serial`` when resuming, else S.
- ``event: discontinuity`` (the ``discontinuity`` JSON) when ``from_serial`` cannot be
  honoured; the stream then goes on live from S.
- every channel event as ``id: <serial>`` and ``data: <the WebSocket event JSON>`` (the
  default SSE event type, ``message``);
- ``event: presence`` and ``event: signal``, without an ``id``;
- ``: keep-alive`` comment lines after ``heartbeat_s`` idle seconds;
- ``event: error`` with ``{"error": {"code": 40100, "message": "token expired",
  "correlation_id"}}`` when the caller's token expires (``exp``, with the same leeway as
  the WebSocket), and then the end of the stream: reconnect with a fresh token and
  ``Last-Event-ID``.

``Last-Event-ID`` (sent by browsers when they reconnect) or ``?from_serial=`` resumes as
attach's ``from_serial`` does; ``?epoch=`` names the epoch it belongs to. A stream whose
backlog passes ``outbound_queue`` is a slow consumer: it ends, and the client reconnects
with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from roomcast.core.authz import Principal
from roomcast.core.fanout import AttachResult
from roomcast.core.node import Node
from roomcast.core.subscriber import SubscriberCore
from roomcast.protocol.codec import codec_for
from roomcast.protocol.errors import BadRequest
from roomcast.protocol.http import ChannelPath, ErrorBody, ErrorDetail
from roomcast.protocol.messages import Attach, Discontinuity, Event, Heartbeat, Reply
from roomcast.protocol.session import Attachment

from .api import Api, Call, Param, Returns
from .errors import new_correlation_id

log = logging.getLogger("roomcast.sse")

api = Api()

KEEP_ALIVE = b": keep-alive\n\n"
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-like proxies not to buffer the stream
]


def event_chunk(serial: int, frame: bytes) -> bytes:
    # msgspec's JSON has no raw newline, so one `data:` line holds the whole event.
    return b"id: %d\ndata: %b\n\n" % (serial, frame)


def named_chunk(name: str, frame: bytes, serial: int | None = None) -> bytes:
    head = f"event: {name}\n" + ("" if serial is None else f"id: {serial}\n")
    return head.encode() + b"data: " + frame + b"\n\n"


class SseFraming:
    """Protocol messages as SSE chunks: an event as ``id``/``data``, presence, signals and
    ``discontinuity`` as named events, a heartbeat as a keep-alive comment. Chunks are
    simply concatenated."""

    format = "sse"
    heartbeat = KEEP_ALIVE

    def __init__(self) -> None:
        self.json = codec_for("json")  # the data of every chunk

    def encode(self, message: Reply) -> bytes:
        if isinstance(message, Heartbeat):
            return KEEP_ALIVE
        frame = self.json.encode(message)
        if isinstance(message, Event):
            return event_chunk(message.serial, frame)
        return named_chunk(str(type(message).__struct_config__.tag), frame)

    def join(self, frames: Sequence[bytes]) -> bytes:
        return b"".join(frames)


_FRAMING = SseFraming()


class EventStreams:
    """The open streams of one app (for ``/metrics``, and to end them at shutdown)."""

    def __init__(self) -> None:
        self.open: set[EventStream] = set()

    def __len__(self) -> int:
        return len(self.open)

    def close_all(self) -> None:
        """End every stream cleanly (clients reconnect with ``Last-Event-ID``). A server
        that shuts down should call this first: an open stream never ends by itself."""
        for stream in list(self.open):
            stream.end()


class _ResponseBody:
    """The transport of a stream: the body of its HTTP response, once it has started."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self.asgi_send: Send | None = None

    def send_now(self, frame: bytes) -> bool:
        return False  # ASGI has only an awaited send

    async def send(self, frame: bytes) -> None:
        assert self.asgi_send is not None, "nothing is queued before the response starts"
        await self.asgi_send({"type": "http.response.body", "body": frame, "more_body": True})

    async def close(self, code: int, reason: str) -> None:
        self.stream.end()


class EventStream(SubscriberCore):
    """One SSE client: a subscriber of one channel whose transport is a response body."""

    __slots__ = ("attachment", "body", "channel", "ended", "from_serial", "registry")

    def __init__(
        self, node: Node, channel: str, registry: EventStreams, from_serial: int | None
    ) -> None:
        self.channel = channel
        self.attachment: Attachment | None = None
        self.body = _ResponseBody(self)
        super().__init__(node.fanout, self.body, _FRAMING, {})
        self.registry = registry
        self.from_serial = from_serial
        self.ended = asyncio.Event()

    def describe(self) -> str:
        return f"SSE stream on {self.channel}"

    def open(self, principal: Principal, types: Iterable[str] | None = None) -> None:
        """Subscribe (before the snapshot is read, as attach does), to events of ``types``
        only if given."""
        self.attachment = self.begin_attach(principal, self.channel, types)
        self.registry.open.add(self)

    def end(self) -> None:
        """Unsubscribe; the response ends. Safe to call more than once."""
        self.closed = True
        if not self.ended.is_set():
            self.ended.set()
            self.fanout.unsubscribe(self, self.channel)
            self.fanout.close(self)
            self.registry.open.discard(self)

    def transport_lost(self) -> None:
        self.end()

    def head_frames(self, result: AttachResult) -> list[bytes]:
        """``event: attached`` with the ``id`` to resume from if the stream drops before the
        next event: ``from_serial`` when resuming, else the snapshot's serial."""
        attached = result.attached
        resume_from = attached.serial if not attached.resumed else self.from_serial
        json = _FRAMING.json
        head = named_chunk("attached", json.encode(attached), resume_from)
        if result.discontinuity is not None:
            gone = Discontinuity(channel=attached.channel, reason=result.discontinuity)
            head += _FRAMING.encode(gone)
        return [head]

    def expired_frame(self) -> bytes:
        correlation_id = new_correlation_id()
        log.info(
            "ending SSE stream on %s: token expired (correlation id %s)",
            self.channel,
            correlation_id,
        )
        detail = ErrorDetail(code=40100, message="token expired", correlation_id=correlation_id)
        return named_chunk("error", msgspec.json.encode(ErrorBody(error=detail)))


class EventStreamResponse(Response):
    """Streams an attached :class:`EventStream` until the client goes, the stream is
    dropped, or an error ends it. The stream is always ended (unsubscribed) at the end."""

    media_type = "text/event-stream"

    def __init__(self, stream: EventStream, result: AttachResult, expires_at: float | None):
        # Not Response.__init__: it would add a Content-Length to an endless body.
        self.status_code = 200
        self.background = None
        self.body = b""
        self.raw_headers = list(_HEADERS)
        self.stream = stream
        self.result = result
        self.expires_at = expires_at  # the stream ends (after `event: error`) once it passes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = self.stream
        produce = asyncio.ensure_future(self._produce(send))
        watch = asyncio.ensure_future(_disconnected(receive))
        ended = asyncio.ensure_future(stream.ended.wait())
        tasks = (produce, watch, ended)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # The server gave up waiting for this endless response (graceful shutdown
            # timed out). End it cleanly instead of dying with a stack trace in the log.
            log.info("SSE stream on %s cancelled by the server", stream.channel)
        finally:
            stream.end()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await stream.stop()
        failure = None if produce.cancelled() else produce.exception()
        if failure is not None:
            log.error("SSE stream on %s failed", stream.channel, exc_info=failure)
        if watch.cancelled():
            # The client is still there: end the response cleanly if the socket takes it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    send({"type": "http.response.body", "body": b"", "more_body": False}), 1.0
                )

    async def _produce(self, send: Send) -> None:
        stream = self.stream
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        stream.body.asgi_send = send
        stream.fanout.open(stream)  # keep-alives when idle
        stream.expire_at(self.expires_at)
        assert stream.attachment is not None, "a stream is open before its response"
        await stream.finish_attach(stream.attachment, self.result)
        await stream.ended.wait()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@api.operation(
    "GET",
    "/v1/channels/{channel}/events",
    summary="Follow a channel as Server-Sent Events",
    description=(
        "Needs `subscribe`. The stream starts with `event: attached` (the `attached` JSON). "
        "Then each channel event comes as `id: <serial>` and `data: <the WebSocket event "
        "JSON>`; presence and signals as `event: presence` and `event: signal`; "
        "`event: discontinuity` when `from_serial` cannot be honoured (reload from "
        "history); `: keep-alive` comments after `heartbeat_s` idle seconds. When the "
        "caller's token expires, `event: error` with the error body (code 40100) ends the "
        "stream; reconnect with a fresh token and `Last-Event-ID`. "
        "`Last-Event-ID` (or `from_serial`) resumes with every event after it, "
        "without gap or duplicate. `types` (comma-separated, or repeated) sends only "
        "events of those types, live and in the replay."
    ),
    tag="channels",
    path_params=ChannelPath,
    query=Attach,
    params=(
        Param(
            "Last-Event-ID",
            "header",
            "The serial of the last event seen (browsers send it when they reconnect); "
            "it wins over `from_serial`.",
            {"type": "string", "pattern": "^[0-9]+$"},
        ),
    ),
    returns=(
        Returns(
            "200",
            "An endless `text/event-stream`; the `data` of each event is one of the JSON "
            "types `Event`, `Attached`, `Discontinuity`, `PresenceEvent`, `SignalEvent`.",
            media_type="text/event-stream",
            schema={"type": "string"},
        ),
    ),
)
async def channel_events(call: Call) -> Response:
    node, channel = call.node, call.where.channel
    fixed: dict[str, Any] = {"channel": channel}
    last_event_id = call.request.headers.get("last-event-id", "").strip()
    if last_event_id:
        if not last_event_id.isdigit():
            raise BadRequest(f"Last-Event-ID {last_event_id!r} is not a serial")
        fixed["from_serial"] = int(last_event_id)
    types = call.request.query_params.getlist("types")
    if types:  # `?types=create,update` or `?types=create&types=update`
        fixed["types"] = [t for value in types for t in value.split(",")]
    req = call.query(Attach, **fixed)
    registry: EventStreams = call.request.app.state.event_streams
    stream = EventStream(node, channel, registry, req.from_serial)
    stream.open(call.principal, req.types)
    try:
        result = await node.attach(call.principal, req)
    except BaseException:
        stream.end()
        raise
    return EventStreamResponse(stream, result, call.expires_at)


__all__ = ["EventStream", "EventStreamResponse", "EventStreams", "api"]
