"""The answers to one message as one HTTP response: what the AI SDK chat stream
(``ai_sdk.py``) and the AG-UI run stream (``ag_ui.py``) share.

A :class:`ReplyStream` is an :class:`~roomcast.server.sse.EventStream` (the subscriber
core: attach barrier, replay from a serial, slow consumers, token expiry) whose frames are
the protocol's JSON, handed as they are written to a :class:`Translator`, which turns them
into the bytes of its wire format and says when the reply is done. Closing the response
only unsubscribes: the answers go on.

Which answers to wait for is decided before the message is stored, by the rule the agents
follow (:func:`roomcast.protocol.answering.expected_agents`), and written into the message
as ``extras.awaits``; each agent named there answers or publishes ``agent.silent``, so a
reply ends when the log says so, with no timer (but a safety net,
:data:`ANSWER_START_TIMEOUT_S`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from starlette.responses import Response

from roomcast.core.fanout import AttachResult
from roomcast.core.node import Node
from roomcast.protocol.answering import (
    AWAITS,
    awaits,
    expected_agents,
    room_agents,
)
from roomcast.protocol.codec import codec_for
from roomcast.protocol.errors import Conflict
from roomcast.protocol.messages import (
    Attach,
    Discontinuity,
    Heartbeat,
    Message,
    Publish,
    Reply,
)

from .ai_sdk_chunks import answer_key
from .api import Call, Returns
from .sse import KEEP_ALIVE, EventStream, EventStreamResponse, EventStreams, _ResponseBody

log = logging.getLogger("roomcast.replies")

ANSWER_START_TIMEOUT_S = 120.0
"""How long a reply waits for an expected agent that shows no sign at all (no answer, no
``agent.silent``): a worker that died after claiming the message. Only a safety net."""
RECENT = 100  # messages read to find the answer that streams
_SEPARATOR = b"\0"  # between the frames of one batch: JSON never holds it


class Translator(Protocol):
    """Turns the room's messages into one wire format's reply, and knows when it is done."""

    @property
    def channel(self) -> str: ...

    @property
    def waiting(self) -> set[str]:
        """The expected agents that have not shown up yet."""
        ...

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The response's headers."""
        ...

    @property
    def done(self) -> bool: ...

    def describe(self) -> str: ...

    def head(self) -> bytes:
        """The body's first bytes (the reply may be done already: nobody to wait for)."""
        ...

    def feed(self, message: Reply) -> bytes:
        """What one message of the room (an event, presence, a signal) makes."""
        ...

    def give_up(self, why: str) -> None:
        """Stop waiting for the agents that have not shown up."""
        ...

    def finish(self) -> bytes:
        """The body's last bytes, once :attr:`done`."""
        ...

    def cut_short(self, reason: str) -> bytes:
        """The body's last bytes when the stream must end early (a token expired)."""
        ...


class ReplyFraming:
    """The protocol's JSON (so the fan-out shares its frames with JSON WebSockets), frames
    of a batch kept apart for :class:`_ReplyBody` to translate."""

    format = "json"

    def __init__(self) -> None:
        self.json = codec_for("json")
        self.heartbeat = self.json.heartbeat

    def encode(self, message: Reply) -> bytes:
        return self.json.encode(message)

    def join(self, frames: Sequence[bytes]) -> bytes:
        return _SEPARATOR.join(frames)


_FRAMING = ReplyFraming()


class _ReplyBody(_ResponseBody):
    """Writes a stream's frames through its translator, and ends it when the reply is done."""

    def __init__(self, stream: ReplyStream) -> None:
        super().__init__(stream)
        self.reply = stream
        self.finished = False

    async def send(self, frame: bytes) -> None:
        out = [self.translate(piece) for piece in frame.split(_SEPARATOR)]
        translator = self.reply.translator
        if translator.done and not self.finished:
            self.finished = True
            out.append(translator.finish())
        await super().send(b"".join(out))
        if self.finished:
            self.stream.end()

    def translate(self, frame: bytes) -> bytes:
        if not frame.startswith(b"{"):
            return frame  # already in the wire format (the head, an expiry)
        translator = self.reply.translator
        out = []
        for message in _FRAMING.json.decode_reply(frame):
            if isinstance(message, Heartbeat):
                out.append(KEEP_ALIVE)
            elif isinstance(message, Discontinuity):
                translator.give_up(f"the room's log cannot be followed: {message.reason}")
            else:
                out.append(translator.feed(message))
        return b"".join(out)

    async def close(self, code: int, reason: str) -> None:
        if not self.finished and self.asgi_send is not None:
            self.finished = True
            try:
                await super().send(self.reply.translator.cut_short(reason))
            except Exception:
                log.debug("the %s is gone", self.reply.describe())
        self.stream.end()


class ReplyStream(EventStream):
    """One reply: the answers to one message, from the room's log, through a translator."""

    def __init__(
        self, node: Node, registry: EventStreams, translator: Translator, from_serial: int | None
    ) -> None:
        super().__init__(node, translator.channel, registry, from_serial)
        self.translator = translator
        self.codec = _FRAMING
        self.body = self.transport = _ReplyBody(self)
        self._deadline: asyncio.TimerHandle | None = None

    def describe(self) -> str:
        return self.translator.describe()

    def head_frames(self, result: AttachResult) -> list[bytes]:
        if result.discontinuity is not None:
            self.translator.give_up(f"the room's log cannot be followed: {result.discontinuity}")
        else:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(ANSWER_START_TIMEOUT_S, self._give_up)
        # A keep-alive after the head: the reply may be done already (nobody to wait for).
        return [self.translator.head(), KEEP_ALIVE]

    def _give_up(self) -> None:
        names = ", ".join(sorted(self.translator.waiting))
        if names and not self.closed:
            self.translator.give_up(f"{names} did not answer within {ANSWER_START_TIMEOUT_S:g} s")
            self.push(KEEP_ALIVE)  # goes through the body, which ends the reply

    def end(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().end()

    def expired_frame(self) -> bytes:
        return b""  # the close that follows says it


class ReplyStreamResponse(EventStreamResponse):
    def __init__(self, stream: ReplyStream, result: AttachResult, expires_at: float | None):
        super().__init__(stream, result, expires_at)
        self.raw_headers = list(stream.translator.headers)


def finished_reply(translator: Translator) -> Response:
    """A reply with nothing to wait for: its head and its end at once."""
    body = translator.head() + translator.finish()
    response = Response(body)
    length = (b"content-length", str(len(body)).encode())
    response.raw_headers = [*translator.headers, length]
    return response


async def follow(
    call: Call,
    translator: Translator,
    from_serial: int | None,
    then: Callable[[], Awaitable[None]] | None = None,
) -> Response:
    """Stream the reply from the room's events after ``from_serial`` (live only when None);
    ``then`` runs once the stream is attached (so what it causes is seen)."""
    if translator.done:
        return finished_reply(translator)
    node, principal = call.node, call.principal
    registry: EventStreams = call.request.app.state.event_streams
    stream = ReplyStream(node, registry, translator, from_serial)
    stream.open(principal)
    try:
        result = await node.attach(
            principal, Attach(channel=translator.channel, from_serial=from_serial)
        )
        if then is not None:
            await then()
    except BaseException:
        stream.end()
        raise
    return ReplyStreamResponse(stream, result, call.expires_at)


def data_events(description: str) -> Returns:
    """The 200 of a reply: Server-Sent Events whose ``data`` is one JSON document each."""
    return Returns(
        "200",
        description,
        media_type="text/event-stream",
        schema={
            "type": "object",
            "properties": {"data": {"type": "string"}, "event": {"const": "message"}},
            "required": ["data"],
        },
    )


async def expected_for(node: Node, channel: str, message: Message) -> list[str]:
    """The agents of this server that answer ``message`` or say they stay silent."""
    if not node.agents:
        return []
    listed = room_agents(await node.store.objects(channel))
    return expected_agents(node.agents, channel, message, listed)


async def ask(call: Call, channel: str, text: str, message_id: str | None) -> tuple[int, list[str]]:
    """Publish ``text`` as the caller's message, naming the agents that will answer it
    (``extras.awaits``); returns its msg_serial and those agents. A ``message_id`` seen
    before (a retry) gives the first message's serial, and nothing is published twice."""
    principal = call.principal
    draft = Message(
        msg_serial=0,
        id=None,
        client_id=principal.client_id,
        name="text",
        data=text,
        extras={},
        timestamp=0,
        updated_at=0,
        status="complete",
    )
    expected = await expected_for(call.node, channel, draft)
    publish = Publish(
        channel=channel,
        data=text,
        id=message_id or None,
        extras={AWAITS: expected} if expected else None,
    )
    ok = await call.node.publish(principal, publish)
    assert isinstance(ok.serial, int)
    if message_id:  # a retry, or an id another message of the room holds
        stored = await call.node.store.get_message(channel, ok.serial)
        if stored is not None and (stored.client_id != principal.client_id or stored.data != text):
            raise Conflict(
                f"message id {message_id[:80]!r} is taken in {channel} by another message: "
                "ids are the room's idempotency keys; send a new id"
            )
        if stored is not None:
            return ok.serial, awaits(stored)
    return ok.serial, expected


async def pending_reply(node: Node, channel: str) -> tuple[int, list[str]] | None:
    """The latest message still waiting for agents that have neither answered nor said they
    stay silent (asked less than :data:`ANSWER_START_TIMEOUT_S` ago), and those agents: a
    reply about to stream."""
    messages, _ = await node.store.history(channel, before=None, after=None, limit=RECENT)
    asked = next((m for m in reversed(messages) if awaits(m)), None)
    if asked is None or time.time() * 1000 - asked.timestamp > ANSWER_START_TIMEOUT_S * 1000:
        return None
    shown = {
        m.client_id for m in messages if answer_key(m) == (asked.msg_serial, None) and m.client_id
    }
    waiting = [name for name in awaits(asked) if name not in shown]
    return (asked.msg_serial, waiting) if waiting else None


async def streaming_reply(
    node: Node, channel: str
) -> tuple[tuple[int, str | None], list[str]] | None:
    """The message whose answers stream in the room now (the latest such), if any, and the
    agents whose answers to it stream."""
    messages, _ = await node.store.history(channel, before=None, after=None, limit=RECENT)
    for message in reversed(messages):
        key = answer_key(message)
        if key is not None and message.status == "streaming" and message.name == "text":
            streaming = {
                m.client_id
                for m in messages
                if answer_key(m) == key and m.status == "streaming" and m.client_id
            }
            return key, sorted(streaming)
    return None


__all__ = [
    "ANSWER_START_TIMEOUT_S",
    "RECENT",
    "ReplyStream",
    "Translator",
    "ask",
    "data_events",
    "expected_for",
    "finished_reply",
    "follow",
    "pending_reply",
    "streaming_reply",
]
