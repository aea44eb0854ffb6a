"""The tools of ``/mcp`` (docs/mcp.md): a room's messages, presence and live objects.

Each tool is a thin adapter over a :class:`~roomcast.core.node.Node` method, called as the
MCP client's principal, so the capability, size and ownership rules are the node's: a
refusal raises a :class:`~roomcast.protocol.errors.RoomcastError`, which ``server/mcp.py``
turns into a tool error (``isError``) and which stores nothing. Requests are decoded into
the protocol's own request types (``Publish``, ``History``, ...), so a bad room name or
serial is refused by the same checks as on every other way in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from roomcast.core.authz import Principal
from roomcast.core.fanout import Framing
from roomcast.core.node import Node
from roomcast.protocol.codec import codec_for
from roomcast.protocol.errors import BadRequest, NotFound
from roomcast.protocol.messages import (
    Append,
    Event,
    History,
    HistoryReply,
    Message,
    Publish,
    Update,
)

from . import mcp_objects as objects

MAX_WAIT_S = 25.0
DEFAULT_LIMIT = 50


@dataclass(frozen=True, slots=True)
class ToolCall:
    """Who calls a tool, on which node; ``enter`` shows the caller in a room's presence;
    ``stopping`` is set when the node stops (a wait then returns at once)."""

    node: Node
    principal: Principal
    enter: Callable[[str], Awaitable[None]]
    stopping: asyncio.Event


Run = Callable[[ToolCall, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]
    run: Run


def decode(kind: type[Any], **fields: Any) -> Any:
    """A protocol request from a tool's arguments, checked as on the wire (40000)."""
    try:
        return msgspec.convert({k: v for k, v in fields.items() if v is not None}, kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(str(exc)) from None


def shown(message: Message) -> dict[str, Any]:
    """A message as a tool returns it: its serial, author and text."""
    out: dict[str, Any] = {
        "msg_serial": message.msg_serial,
        "author": message.client_id,
        "name": message.name,
        "text": message.data if isinstance(message.data, str) else None,
        "status": message.status,
        "timestamp": message.timestamp,
    }
    if not isinstance(message.data, str) and not message.deleted:
        out["data"] = message.data
    reply_to = message.extras.get("reply_to")
    if reply_to is not None:
        out["reply_to"] = reply_to
    if message.deleted:
        out["deleted"] = True
    return out


def _page(reply: HistoryReply) -> dict[str, Any]:
    messages = [shown(m) for m in reply.messages]
    last = reply.messages[-1].msg_serial if reply.messages else None
    return {"messages": messages, "has_more": reply.has_more, "last_serial": last}


async def _check_reply_to(call: ToolCall, room: str, reply_to: Any) -> dict[str, Any] | None:
    if reply_to is None:
        return None
    if not isinstance(reply_to, int) or isinstance(reply_to, bool) or reply_to < 1:
        raise BadRequest("`reply_to` must be a msg_serial (a positive integer)")
    if await call.node.store.get_message(room, reply_to) is None:
        raise BadRequest(f"no message {reply_to} in {room} to reply to")
    return {"reply_to": reply_to}


async def post_message(call: ToolCall, args: dict[str, Any]) -> Any:
    room = args.get("room")
    req: Publish = decode(Publish, channel=room, data=args.get("text"), name="text")
    if not isinstance(req.data, str) or not req.data:
        raise BadRequest("`text` must be a non-empty string")
    extras = await _check_reply_to(call, req.channel, args.get("reply_to"))
    req = msgspec.structs.replace(req, extras=extras)
    ok = await call.node.publish(call.principal, req)
    await call.enter(req.channel)
    return {"room": req.channel, "msg_serial": ok.serial}


def _limit(args: dict[str, Any]) -> int:
    limit = args.get("limit", DEFAULT_LIMIT)
    return limit if isinstance(limit, int) else DEFAULT_LIMIT


async def read_messages(call: ToolCall, args: dict[str, Any]) -> Any:
    req: History = decode(
        History, channel=args.get("room"), after=args.get("since_serial"), limit=_limit(args)
    )
    reply = await call.node.history(call.principal, req)
    await _check_serial(call, req)
    await call.enter(req.channel)
    return {"room": req.channel, **_page(reply)}


async def _check_serial(call: ToolCall, req: History) -> None:
    """40400 for a ``since_serial`` past the room's latest serial (nothing to wait for)."""
    if not req.after:
        return
    info = await call.node.store.channel_info(req.channel)
    latest = info.serial if info is not None else 0
    if req.after > latest:
        raise NotFound(f"no serial {req.after} in {req.channel}: its latest is {latest}")


class _Waiter:
    """A fan-out subscriber that only notes that a message newer than ``since`` arrived."""

    def __init__(self, since: int) -> None:
        self.since = since
        self.arrived = asyncio.Event()
        self.last_sent = time.monotonic()

    @property
    def codec(self) -> Framing:
        return codec_for("json")  # the WebSocket's: the fan-out encodes it anyway

    def deliver(self, channel: str, events: Sequence[Event], frames: Sequence[bytes]) -> None:
        if any(e.type == "create" and e.serial > self.since for e in events):
            self.arrived.set()

    def deliver_ephemeral(self, channel: str, frame: bytes) -> None:
        pass

    def flush(self) -> None:
        pass

    def send_heartbeat(self) -> None:
        self.last_sent = time.monotonic()

    def reset(self, reason: str) -> None:
        self.arrived.set()  # the log started over: read again


async def wait_for_messages(call: ToolCall, args: dict[str, Any]) -> Any:
    timeout = args.get("timeout_s", MAX_WAIT_S)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
        raise BadRequest("`timeout_s` must be a number of seconds, 0 to 25")
    if timeout > MAX_WAIT_S:
        raise BadRequest(f"`timeout_s` is at most {MAX_WAIT_S:g} seconds, not {timeout}")
    since = args.get("since_serial")
    if since is None:
        raise BadRequest("`since_serial` is required: the last msg_serial you have read")
    req: History = decode(History, channel=args.get("room"), after=since, limit=_limit(args))
    node = call.node
    waiter = _Waiter(since if isinstance(since, int) else 0)
    node.fanout.subscribe(waiter, req.channel)
    try:
        await node.store.bus.subscribe(req.channel)
        deadline = time.monotonic() + float(timeout)
        await call.enter(req.channel)
        while True:
            waiter.arrived.clear()
            reply = await node.history(call.principal, req)
            if reply.messages:
                return {"room": req.channel, "timed_out": False, **_page(reply)}
            await _check_serial(call, req)
            left = deadline - time.monotonic()
            if left <= 0 or call.stopping.is_set():  # stopping: call again, on another node
                return {"room": req.channel, "timed_out": True, **_page(reply)}
            await _first_of(waiter.arrived, call.stopping, left)
    finally:
        node.fanout.unsubscribe(waiter, req.channel)


async def _first_of(one: asyncio.Event, other: asyncio.Event, within_s: float) -> None:
    """Until either event is set, at most ``within_s`` seconds."""
    waits = {asyncio.ensure_future(one.wait()), asyncio.ensure_future(other.wait())}
    try:
        await asyncio.wait(waits, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def list_rooms(call: ToolCall, args: dict[str, Any]) -> Any:
    prefix = args.get("prefix") or ""
    if not isinstance(prefix, str):
        raise BadRequest("`prefix` must be a string")
    rooms = await call.node.list_channels(call.principal, prefix, 100)
    return {
        "rooms": [
            {"room": r.channel, "latest_serial": r.serial, "updated_at": r.updated_at}
            for r in rooms
            if not r.channel.startswith("meta:")
        ]
    }


async def who_is_here(call: ToolCall, args: dict[str, Any]) -> Any:
    room = decode(History, channel=args.get("room")).channel
    members = await call.node.presence_members(call.principal, room)
    return {
        "room": room,
        "members": [
            {"client_id": m.client_id, "connection_id": m.connection_id, "data": m.data}
            for m in members
        ],
    }


async def stream_message(call: ToolCall, args: dict[str, Any]) -> Any:
    """start → msg_serial; append (text) → ok; end (optional last text, status)."""
    action = args.get("action")
    room = args.get("room")
    text = args.get("text")
    node = call.node
    if action == "start":
        req: Publish = decode(Publish, channel=room, data=text or "", name="text", streaming=True)
        extras = await _check_reply_to(call, req.channel, args.get("reply_to"))
        ok = await node.publish(call.principal, msgspec.structs.replace(req, extras=extras))
        await call.enter(req.channel)
        return {"room": req.channel, "msg_serial": ok.serial, "status": "streaming"}
    if action not in ("append", "end"):
        raise BadRequest("`action` must be start, append or end")
    serial = args.get("msg_serial")
    if serial is None:
        raise BadRequest(f"`msg_serial` is required to {action}: the serial `start` returned")
    if action == "append" or text:
        append: Append = decode(Append, channel=room, msg_serial=serial, data=text)
        await node.append_to(call.principal, append)
        if action == "append":
            return {"room": append.channel, "msg_serial": append.msg_serial, "appended": True}
    status = args.get("status") or "complete"
    if status not in ("complete", "cancelled", "failed"):
        raise BadRequest("`status` must be complete, cancelled or failed")
    update: Update = decode(Update, channel=room, msg_serial=serial, status=status)
    await node.update(call.principal, update)
    return {"room": update.channel, "msg_serial": update.msg_serial, "status": status}


def _room_objects(call: ToolCall, args: dict[str, Any]) -> objects.RoomObjects:
    room = decode(History, channel=args.get("room")).channel
    return objects.RoomObjects(call.node, call.principal, room)


async def create_poll(call: ToolCall, args: dict[str, Any]) -> Any:
    return await objects.create_poll(
        _room_objects(call, args), args.get("question"), args.get("options")
    )


async def vote(call: ToolCall, args: dict[str, Any]) -> Any:
    return await objects.vote(_room_objects(call, args), args.get("option"), args.get("poll_id"))


async def add_to_board(call: ToolCall, args: dict[str, Any]) -> Any:
    return await objects.add_to_board(
        _room_objects(call, args), args.get("text"), args.get("board")
    )


async def get_shared(call: ToolCall, args: dict[str, Any]) -> Any:
    return await objects.get_shared(_room_objects(call, args), args.get("key"))


async def set_shared(call: ToolCall, args: dict[str, Any]) -> Any:
    if "value" not in args:
        raise BadRequest("`value` is required")
    return await objects.set_shared(_room_objects(call, args), args.get("key"), args["value"])


_STR: dict[str, Any] = {"type": "string"}
_ROOM: dict[str, Any] = {"type": "string", "description": "The room's name (a channel)."}
_SERIAL: dict[str, Any] = {"type": "integer", "minimum": 0}


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


TOOLS: dict[str, ToolSpec] = {
    spec.name: spec
    for spec in (
        ToolSpec(
            "post_message",
            "Post a text message to a room as yourself; returns its msg_serial.",
            _schema(
                {"room": _ROOM, "text": _STR, "reply_to": {**_SERIAL, "minimum": 1}},
                ["room", "text"],
            ),
            post_message,
        ),
        ToolSpec(
            "read_messages",
            "Read a room's messages, oldest first, with their msg_serial and author. "
            "`since_serial` (exclusive) reads those after it; without it, the newest.",
            _schema(
                {
                    "room": _ROOM,
                    "since_serial": _SERIAL,
                    "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
                },
                ["room"],
            ),
            read_messages,
        ),
        ToolSpec(
            "wait_for_messages",
            "Wait until a room has a message newer than `since_serial`, then return the new "
            "ones (as read_messages); or return with `timed_out` after `timeout_s` (at most "
            "25). Call it in a loop to listen to a room.",
            _schema(
                {
                    "room": _ROOM,
                    "since_serial": _SERIAL,
                    "timeout_s": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
                },
                ["room", "since_serial"],
            ),
            wait_for_messages,
        ),
        ToolSpec(
            "list_rooms",
            "List the rooms you may read (those with at least one message), by name.",
            _schema({"prefix": _STR}, []),
            list_rooms,
        ),
        ToolSpec(
            "who_is_here",
            "Who is present in a room: people, agents and MCP clients.",
            _schema({"room": _ROOM}, ["room"]),
            who_is_here,
        ),
        ToolSpec(
            "stream_message",
            "Write a long answer that others see grow: `start` (optional first `text`, "
            "`reply_to`) returns a msg_serial; `append` adds `text` to it; `end` (optional "
            "last `text`, `status` complete|cancelled|failed) finishes it.",
            _schema(
                {
                    "room": _ROOM,
                    "action": {"enum": ["start", "append", "end"]},
                    "text": _STR,
                    "msg_serial": {**_SERIAL, "minimum": 1},
                    "reply_to": {**_SERIAL, "minimum": 1},
                    "status": {"enum": ["complete", "cancelled", "failed"]},
                },
                ["room", "action"],
            ),
            stream_message,
        ),
        ToolSpec(
            "create_poll",
            "Create a poll in a room; people vote in the side panel.",
            _schema(
                {
                    "room": _ROOM,
                    "question": _STR,
                    "options": {"type": "array", "items": _STR, "minItems": 2},
                },
                ["room", "question", "options"],
            ),
            create_poll,
        ),
        ToolSpec(
            "vote",
            "Vote in a room's poll as yourself (a new vote replaces your old one). `option` "
            "is an option id (opt-1) or its label; `poll_id` defaults to the latest poll.",
            _schema({"room": _ROOM, "option": _STR, "poll_id": _STR}, ["room", "option"]),
            vote,
        ),
        ToolSpec(
            "add_to_board",
            "Add an item to a room's board (notes, ideas, a plan), made if missing "
            "(default board: Notes).",
            _schema({"room": _ROOM, "text": _STR, "board": _STR}, ["room", "text"]),
            add_to_board,
        ),
        ToolSpec(
            "get_shared",
            "Read a shared value of a room, or all of them without `key`.",
            _schema({"room": _ROOM, "key": _STR}, ["room"]),
            get_shared,
        ),
        ToolSpec(
            "set_shared",
            "Set a shared value of a room (a score, a decision) for everyone to see.",
            _schema({"room": _ROOM, "key": _STR, "value": {}}, ["room", "key", "value"]),
            set_shared,
        ),
    )
}

__all__ = ["MAX_WAIT_S", "TOOLS", "ToolCall", "ToolSpec", "shown"]
