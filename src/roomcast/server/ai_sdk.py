"""``/v1/ai-sdk/chat``: a room as the Vercel AI SDK's chat backend (docs/ai-sdk.md).

``DefaultChatTransport({api: "<server>/v1/ai-sdk/chat"})`` works against these routes as
they are. The chat ``id`` names the room ``room:<id>``.

- ``POST /v1/ai-sdk/chat`` publishes the last user message as the caller's and answers a
  UI message stream of the answers it triggers. Which answers to wait for is decided as
  in every reply (:mod:`~roomcast.server.replies`): the stream ends when the log says
  each expected agent answered or stays silent, with no timer. ``trigger: "regenerate-message"``
  asks the same agents again (the ``agent.regenerate`` signal).
- ``GET /v1/ai-sdk/chat/{id}/stream`` replays the answer streaming in the room from its
  beginning, then live (or the one due to start); 204 when none streams.
- ``POST /v1/ai-sdk/chat/{id}/stop`` cancels it (cancel-own / cancel-any).
- ``GET /v1/ai-sdk/chat/{id}/messages`` is the room's recent history as ``UIMessage``s.

A stream is a :class:`~roomcast.server.replies.ReplyStream` (the subscriber core) whose
translator, :class:`ChatReply`, makes chunks with :class:`~.ai_sdk_chunks.ReplyChunks` as
the frames are written. Closing the response only unsubscribes: the answers go on.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct
from starlette.responses import Response

from roomcast.core.authz import authorize
from roomcast.core.sequencer import META_CHANNELS
from roomcast.protocol.answering import (
    REGENERATE,
    awaits,
)
from roomcast.protocol.codec import decode_json_body
from roomcast.protocol.errors import BadRequest, Conflict, Forbidden
from roomcast.protocol.messages import (
    Cancel,
    Event,
    History,
    Reply,
    SignalEvent,
)

from .ai_sdk_chunks import (
    Chunk,
    ReplyChunks,
    answer_key,
    parse_reply_id,
    parse_user_id,
    ui_messages,
)
from .api import Api, Call, Returns, read_body
from .replies import (
    RECENT,
    ask,
    data_events,
    expected_for,
    finished_reply,
    follow,
    pending_reply,
    streaming_reply,
)
from .rest import batch_body_limit, single_body_limit

log = logging.getLogger("roomcast.ai_sdk")

api = Api()

ROOM_PREFIX = "room:"
DONE = b"data: [DONE]\n\n"
UI_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"x-vercel-ai-ui-message-stream", b"v1"),
]

# `.` and `..` alone are refused: a browser's URL rules make `/chat/../stream` another path.
ROOM_ID = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9_.\-]{1,195}")
RoomId = Annotated[str, Meta(pattern=r"^(?!\.\.?$)[A-Za-z0-9_.\-]{1,195}(?!\n)$")]
PartType = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^(?!file(?!\n)$)")]


class UIPartIn(Struct, kw_only=True):
    """A part of a ``UIMessage``; only text parts are read (``file`` is refused)."""

    type: PartType
    text: Any = None


class UIMessageIn(Struct, kw_only=True):
    id: Annotated[str, Meta(max_length=200)]
    role: Literal["system", "user", "assistant"]
    parts: list[UIPartIn]
    metadata: Any = None


class ChatRequest(Struct, kw_only=True):
    """The body ``DefaultChatTransport`` sends (other fields are ignored)."""

    id: RoomId
    messages: list[UIMessageIn] = []
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    messageId: str | None = None  # the AI SDK's name


class ChatPath(Struct, kw_only=True):
    id: RoomId


class ChatMessagesQuery(Struct, kw_only=True):
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100


ReplyId = Annotated[
    str,
    Meta(
        pattern=r"^reply-[0-9]{1,16}(-[0-9a-f]{1,32})?$",
        description="An assistant message of the chat: `reply-<msg_serial>[-<id>]`.",
    ),
]


class StopRequest(Struct, kw_only=True):
    messageId: ReplyId | None = None  # the AI SDK's name; absent: every answer one may stop


class StopResult(Struct, kw_only=True):
    """The msg_serials of the answers the request cancelled."""

    cancelled: list[int]


class ChatMessages(Struct, kw_only=True):
    """The room's recent messages as AI SDK ``UIMessage``s, oldest first."""

    messages: list[dict[str, Any]]
    has_more: bool


def room_of(chat_id: str) -> str:
    return ROOM_PREFIX + chat_id


def render(chunk: Chunk) -> bytes:
    return b"data: " + msgspec.json.encode(chunk) + b"\n\n"


class ChatReply:
    """The :class:`~.replies.Translator` of a UI message stream: the chunks of
    :class:`~.ai_sdk_chunks.ReplyChunks` as ``data:`` events, ending with ``[DONE]``."""

    headers = UI_STREAM_HEADERS

    def __init__(self, chunks: ReplyChunks) -> None:
        self.chunks = chunks

    @property
    def channel(self) -> str:
        return self.chunks.channel

    @property
    def waiting(self) -> set[str]:
        return self.chunks.waiting

    @property
    def done(self) -> bool:
        return self.chunks.done

    def describe(self) -> str:
        return f"AI SDK stream on {self.channel}"

    def head(self) -> bytes:
        return render(self.chunks.start())

    def feed(self, message: Reply) -> bytes:
        if not isinstance(message, Event):
            return b""
        return b"".join(render(c) for c in self.chunks.feed(message))

    def give_up(self, why: str) -> None:
        self.chunks.give_up(why)

    def finish(self) -> bytes:
        return b"".join(render(c) for c in self.chunks.finish()) + DONE

    def cut_short(self, reason: str) -> bytes:
        return render({"type": "error", "errorText": reason}) + DONE


def refuse_files(raw: Any) -> None:
    """A clear 400 for file parts, before the body's type says it in its own words."""
    messages = raw.get("messages") if isinstance(raw, dict) else None
    for message in messages if isinstance(messages, list) else ():
        parts = message.get("parts") if isinstance(message, dict) else None
        for part in parts if isinstance(parts, list) else ():
            if isinstance(part, dict) and part.get("type") == "file":
                raise BadRequest("file parts are not supported yet: send text parts")


def user_text(message: UIMessageIn) -> str:
    return "\n".join(p.text for p in message.parts if p.type == "text" and isinstance(p.text, str))


async def submit(call: Call, channel: str, req: ChatRequest) -> Response:
    """Publish the last user message and follow the answers it triggers."""
    last = req.messages[-1] if req.messages else None
    text = user_text(last) if last is not None and last.role == "user" else ""
    if not text.strip():
        return finished_reply(ChatReply(ReplyChunks(channel, 0, None, ())))
    assert last is not None
    serial, expected = await ask(call, channel, text, last.id)
    return await follow(call, ChatReply(ReplyChunks(channel, serial, None, expected)), serial)


async def find_asked(call: Call, channel: str, req: ChatRequest) -> tuple[int, str | None] | None:
    """The message to answer again (and the round of answers being replaced): from the
    ``messageId`` of the assistant message, else the last user message's id."""
    if req.messageId is not None:
        parsed = parse_reply_id(req.messageId)
        if parsed is not None:
            return parsed
    users = [m for m in req.messages if m.role == "user"]
    if not users:
        return None
    serial = parse_user_id(users[-1].id)
    if serial is not None:
        return serial, None
    reply = await call.node.history(call.principal, History(channel=channel, limit=1000))
    found = [m.msg_serial for m in reply.messages if m.id == users[-1].id]
    return (found[-1], None) if found else None


async def regenerate(call: Call, channel: str, req: ChatRequest) -> Response:
    """Ask the agents that answered the message to answer it again."""
    node, principal = call.node, call.principal
    authorize(principal, "publish", channel)
    authorize(principal, "history", channel)
    asked = await find_asked(call, channel, req)
    trigger = await node.store.get_message(channel, asked[0]) if asked is not None else None
    if asked is None or trigger is None:
        return finished_reply(ChatReply(ReplyChunks(channel, 0, None, ())))
    page = await node.history(
        principal, History(channel=channel, after=trigger.msg_serial, limit=1000)
    )
    authors = [
        m.client_id
        for m in page.messages
        if m.name == "text" and m.client_id and answer_key(m) == asked
    ]
    agents = list(dict.fromkeys(authors)) or await expected_for(node, channel, trigger)
    if not agents:
        return finished_reply(ChatReply(ReplyChunks(channel, trigger.msg_serial, None, ())))
    # Every agent asked answers or says it stays silent, whichever worker runs it.
    again = secrets.token_hex(4)
    chunks = ReplyChunks(channel, trigger.msg_serial, again, agents)
    # On meta:channels, where every agent listens: one that is not attached to the room
    # (it was idle) attaches and answers.
    signal = SignalEvent(
        channel=META_CHANNELS,
        client_id=None,
        name=REGENERATE,
        data={
            "channel": channel,
            "reply_to": trigger.msg_serial,
            "agents": agents,
            "regenerate": again,
        },
    )

    async def regenerate_now() -> None:
        await node.store.bus.publish_signal(signal)

    return await follow(call, ChatReply(chunks), None, regenerate_now)


_STREAM = data_events(
    "A UI message stream (`x-vercel-ai-ui-message-stream: v1`): `data: <chunk JSON>` "
    "events, ending with `data: [DONE]`."
)


@api.operation(
    "POST",
    "/v1/ai-sdk/chat",
    summary="Send a message to a room and stream the answers (the AI SDK chat protocol)",
    description=(
        "The body of the AI SDK's `DefaultChatTransport`: `id` (the room is `room:<id>`), "
        "`messages` (the last, a user message, is published as the caller's; its text "
        "parts joined; file parts are 400), `trigger`, `messageId`. Needs `subscribe` and "
        "`publish` (and `history` to regenerate). The answer streams every agent answer "
        "the message triggers; a message that triggers none gets `start` and `finish` at "
        "once. docs/ai-sdk.md."
    ),
    tag="ai-sdk",
    body=ChatRequest,
    returns=(_STREAM,),
)
async def ai_sdk_chat(call: Call) -> Response:
    settings = call.request.app.state.settings
    raw = await call.json(limit=batch_body_limit(settings))
    refuse_files(raw)
    chat_id = raw.get("id") if isinstance(raw, dict) else None
    if isinstance(chat_id, str) and not ROOM_ID.fullmatch(chat_id):
        raise BadRequest(
            f"`id` {chat_id[:80]!r} cannot name a room: use 1 to 195 letters, digits, "
            "`_`, `.` or `-`, not `.` or `..` alone (the room is `room:<id>`)"
        )
    req = call.body_as(raw, ChatRequest)
    channel = room_of(req.id)
    authorize(call.principal, "subscribe", channel)
    if req.trigger == "regenerate-message":
        return await regenerate(call, channel, req)
    return await submit(call, channel, req)


@api.operation(
    "GET",
    "/v1/ai-sdk/chat/{id}/stream",
    summary="Resume the answer streaming in a room (the AI SDK's reconnect request)",
    description=(
        "Needs `subscribe`. 204 when no answer streams in `room:<id>` and none is due; "
        "otherwise the answers to the message it replies to, from their beginning, then "
        "live to their end (an answer due but not started yet is waited for)."
    ),
    tag="ai-sdk",
    path_params=ChatPath,
    returns=(_STREAM, Returns("204", "No answer streams in the room.")),
)
async def ai_sdk_chat_stream(call: Call) -> Response:
    node, channel = call.node, room_of(call.where.id)
    authorize(call.principal, "subscribe", channel)
    found = await streaming_reply(node, channel)
    if found is None:
        pending = await pending_reply(node, channel)  # due, and not started yet
        if pending is None:
            return Response(status_code=204)
        chunks = ReplyChunks(channel, pending[0], None, pending[1])
        return await follow(call, ChatReply(chunks), pending[0])
    (msg_serial, again), streaming = found
    trigger = await node.store.get_message(channel, msg_serial)
    # The agents the message awaits, and those whose answers stream now: a message posted
    # elsewhere (the web UI, the channel API) or answered again awaits none of them.
    awaited = awaits(trigger) if trigger is not None and again is None else []
    expected = sorted({*awaited, *streaming})
    chunks = ReplyChunks(channel, msg_serial, again, expected)
    return await follow(call, ChatReply(chunks), msg_serial)


def stop_only(message_id: str | None) -> tuple[int, str | None] | None:
    """The answers a stop is limited to (None: all); an id that names no assistant message
    of a chat is refused, never read as "all"."""
    if message_id is None:
        return None
    only = parse_reply_id(message_id)
    if only is None:
        raise BadRequest(
            f"`messageId` {message_id[:80]!r} names no assistant message of a chat: use "
            "`reply-<msg_serial>` or `reply-<msg_serial>-<id>`, or leave it out to stop "
            "every answer you may stop"
        )
    return only


@api.operation(
    "POST",
    "/v1/ai-sdk/chat/{id}/stop",
    summary="Stop the answers streaming in a room",
    description=(
        "Cancels every answer streaming in `room:<id>` that the caller may cancel "
        "(`cancel-own`: answers to the caller's messages; `cancel-any`: all), or only "
        "those of the assistant message `messageId` (400 for an id that names none: "
        "`reply-<msg_serial>[-<id>]`). Their streams end with `abort`, and each answer "
        "ends `cancelled` with `cancelled_by`. 403 when answers stream and the caller may "
        "cancel none of them."
    ),
    tag="ai-sdk",
    path_params=ChatPath,
    body=StopRequest,
    body_required=False,
    returns=(Returns("200", "The answers it cancelled.", (StopResult,)),),
)
async def ai_sdk_chat_stop(call: Call) -> StopResult:
    node, principal, channel = call.node, call.principal, room_of(call.where.id)
    settings = call.request.app.state.settings
    body = await read_body(call.request, single_body_limit(settings))
    # An empty body is no body; `null` is a body, and not an object.
    raw = decode_json_body(body) if body.strip() else {}
    req = call.body_as(raw if raw is not None else [], StopRequest)
    only = stop_only(req.messageId)
    messages, _ = await node.store.history(channel, before=None, after=None, limit=RECENT)
    streaming = [
        m
        for m in messages
        if m.status == "streaming"
        and answer_key(m) is not None
        and (only is None or answer_key(m) == only)
    ]
    cancelled: list[int] = []
    refused: Forbidden | None = None
    for message in streaming:
        try:
            await node.cancel(principal, Cancel(channel=channel, msg_serial=message.msg_serial))
            cancelled.append(message.msg_serial)
        except Forbidden as exc:
            refused = exc
        except Conflict:
            pass  # it ended meanwhile
    if refused is not None and not cancelled:
        raise refused
    return StopResult(cancelled=cancelled)


@api.operation(
    "GET",
    "/v1/ai-sdk/chat/{id}/messages",
    summary="A room's recent messages as AI SDK UIMessages",
    description=(
        "Needs `history`. The last `limit` messages of `room:<id>`, oldest first: people's "
        "as `user` messages (`metadata.client_id`), the answers to each message as one "
        "`assistant` message, as the chat stream makes it (`reply-<msg_serial>`)."
    ),
    tag="ai-sdk",
    path_params=ChatPath,
    query=ChatMessagesQuery,
    returns=(Returns("200", "The messages, for `useChat({ messages })`.", (ChatMessages,)),),
)
async def ai_sdk_chat_messages(call: Call) -> ChatMessages:
    channel = room_of(call.where.id)
    query = call.query(ChatMessagesQuery)
    page = await call.node.history(call.principal, History(channel=channel, limit=query.limit))
    return ChatMessages(messages=ui_messages(channel, page.messages), has_more=page.has_more)


__all__ = ["ChatReply", "ChatRequest", "api", "room_of"]
