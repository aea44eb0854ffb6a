"""``GET /v1/channels/{channel}/events``: one channel as Server-Sent Events (PROTOCOL.md §7).

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
import time
from collections.abc import Sequence
from typing import Any

import msgspec
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from roomcast.core.authz import authorize
from roomcast.core.keys import LEEWAY_S
from roomcast.core.node import AttachResult, Node
from roomcast.protocol.codec import codec_for
from roomcast.protocol.errors import BadRequest, RoomcastError
from roomcast.protocol.http import ChannelPath, ErrorBody, ErrorDetail
from roomcast.protocol.messages import Attach, Discontinuity, Event
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


class _Tagged(msgspec.Struct):
    action: str


_action_of = msgspec.json.Decoder(_Tagged).decode


def event_chunk(serial: int, frame: bytes) -> bytes:
    # msgspec's JSON has no raw newline, so one `data:` line holds the whole event.
    return b"id: %d\ndata: %b\n\n" % (serial, frame)


def named_chunk(name: str, frame: bytes, serial: int | None = None) -> bytes:
    head = f"event: {name}\n" + ("" if serial is None else f"id: {serial}\n")
    return head.encode() + b"data: " + frame + b"\n\n"


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
            stream.close()


class EventStream:
    """One SSE client: a fan-out subscriber with a bounded queue of encoded chunks."""

    def __init__(self, node: Node, channel: str, registry: EventStreams, *, limit: int) -> None:
        self.codec = codec_for("json")
        self.node = node
        self.channel = channel
        self.attachment = Attachment(channel)
        self.registry = registry
        self.ended = asyncio.Event()
        self.dropped = False
        self._limit = limit
        self._out: list[bytes] = []
        self._wake = asyncio.Event()

    def open(self) -> None:
        """Subscribe (before the snapshot is read, as attach does)."""
        self.registry.open.add(self)
        self.node.subscribe(self, self.channel)

    def close(self) -> None:
        """Unsubscribe; the response ends. Safe to call more than once."""
        if not self.ended.is_set():
            self.ended.set()
            self.node.unsubscribe(self, self.channel)
            self.registry.open.discard(self)
            self._wake.set()

    # ------------------------------------------------------------------ fan-out side

    def deliver(self, channel: str, events: Sequence[Event], frames: Sequence[bytes]) -> None:
        if self.ended.is_set():
            return
        attachment = self.attachment
        for event, frame in zip(events, frames, strict=True):
            out = attachment.offer(event.serial, event_chunk(event.serial, frame))
            if out is not None:
                self._push(out)
            elif attachment.held_count > self._limit:
                self._drop()  # live events pile up behind a long replay
            if self.ended.is_set():
                return

    def deliver_ephemeral(self, channel: str, frame: bytes) -> None:
        if self.ended.is_set():
            return
        kind = _action_of(frame).action  # "presence" or "signal"
        out = self.attachment.offer(None, named_chunk(kind, frame))
        if out is not None:
            self._push(out)

    def _push(self, chunk: bytes) -> None:
        self._out.append(chunk)
        if len(self._out) > self._limit:
            self._drop()
        else:
            self._wake.set()

    def _drop(self) -> None:
        self._out.clear()
        self.dropped = True
        self.node.stats.slow_consumers += 1
        log.warning(
            "ending slow SSE stream on %s: more than %d messages queued",
            self.channel,
            self._limit,
        )
        self.close()

    # ------------------------------------------------------------------ HTTP side

    def go_live(self, serial: int) -> None:
        """The snapshot at ``serial`` and its replay are out: release the held events."""
        held = self.attachment.go_live(serial)
        if held:
            self._out[:0] = held
            self._wake.set()

    async def next_chunks(self, idle_s: float) -> bytes | None:
        """What is queued, as one chunk; None after ``idle_s`` idle seconds."""
        if not self._out:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), idle_s)
            except TimeoutError:
                return None
        chunks, self._out = self._out, []
        return b"".join(chunks)


class EventStreamResponse(Response):
    """Streams an attached :class:`EventStream` until the client goes, the stream is
    dropped, or an error ends it. The stream is always closed (unsubscribed) at the end."""

    media_type = "text/event-stream"

    def __init__(
        self,
        stream: EventStream,
        result: AttachResult,
        from_serial: int | None,
        expires_at: float | None = None,
    ):
        # Not Response.__init__: it would add a Content-Length to an endless body.
        self.status_code = 200
        self.background = None
        self.body = b""
        self.raw_headers = list(_HEADERS)
        self.stream = stream
        self.result = result
        self.from_serial = from_serial
        # The stream ends (after `event: error` 40100) once the caller's token expires.
        self.deadline = None if expires_at is None else expires_at + LEEWAY_S

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
            stream.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
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
        stream, node, result = self.stream, self.stream.node, self.result
        attached = result.attached
        channel = attached.channel
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})

        async def body(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        resume_from = attached.serial if not attached.resumed else self.from_serial
        encode = stream.codec.encode
        head = named_chunk("attached", encode(attached), resume_from)
        if result.discontinuity is not None:
            gone = Discontinuity(channel=channel, reason=result.discontinuity)
            head += named_chunk("discontinuity", encode(gone))
        await body(head)
        page, until = result.replay, attached.serial
        while page:
            await body(b"".join(event_chunk(e.serial, encode(e)) for e in page))
            if page[-1].serial >= until:
                break
            try:
                page = await node.replay_page(channel, page[-1].serial, until)
            except RoomcastError as exc:
                gone = Discontinuity(channel=channel, reason=exc.message)
                await body(named_chunk("discontinuity", encode(gone)))
                break
        stream.go_live(until)
        heartbeat = node.settings.heartbeat_s
        deadline = self.deadline
        while not stream.ended.is_set():
            wait = heartbeat
            if deadline is not None:
                left = deadline - time.time()
                if left <= 0:
                    await body(self._expired())
                    return
                wait = min(wait, left)
            chunk = await stream.next_chunks(wait)
            if chunk is not None:
                await body(chunk)
            elif wait == heartbeat:
                await body(KEEP_ALIVE)

    def _expired(self) -> bytes:
        correlation_id = new_correlation_id()
        log.info(
            "ending SSE stream on %s: token expired (correlation id %s)",
            self.stream.channel,
            correlation_id,
        )
        detail = ErrorDetail(code=40100, message="token expired", correlation_id=correlation_id)
        return named_chunk("error", msgspec.json.encode(ErrorBody(error=detail)))


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
        "without gap or duplicate."
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
    req = call.query(Attach, **fixed)
    authorize(call.principal, "subscribe", channel)
    registry: EventStreams = call.request.app.state.event_streams
    stream = EventStream(node, channel, registry, limit=node.settings.outbound_queue)
    stream.open()
    try:
        result = await node.attach(call.principal, req)
    except BaseException:
        stream.close()
        raise
    return EventStreamResponse(stream, result, req.from_serial, call.expires_at)


__all__ = ["EventStream", "EventStreamResponse", "EventStreams", "api"]
