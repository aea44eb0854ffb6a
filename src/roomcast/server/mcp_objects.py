"""The live-object tools of ``/mcp``: polls, boards and shared values, over the node.

They keep the conventions of docs/protocol.md §5 that the SDK (``client/polls.py``,
``client/boards.py``), the web page and the agents' built-in tools use, so a poll made
here shows in the side panel and an agent can vote in it:

- a poll is a map ``{kind: "poll", question, options, votes, closed, created_by}`` whose
  ``options`` references a map option_id → label and ``votes`` a map client_id →
  option_id; polls are listed in ``root.polls`` (poll_id → reference);
- a board is a map ``{kind: "board", title, items}`` whose ``items`` references a map
  item_id → ``{text, author, ts, done}``; boards are listed in ``root.boards``;
- other keys of the root map are the room's shared values (``root.agents`` is the
  room's agents and needs ``agent-admin``).

Each step is one :meth:`Node.object_op`, so every rule (capability, size, references) is
the node's; this module only reads the snapshot and picks the operations.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import msgspec

from roomcast.core.authz import Principal
from roomcast.core.node import Node
from roomcast.protocol.errors import BadRequest, Conflict, NotFound
from roomcast.protocol.messages import MapCreate, MapSet, ObjectOp, ObjectState
from roomcast.protocol.objects import ROOT, reference

POLLS_KEY = "polls"
BOARDS_KEY = "boards"
RESERVED_KEYS = frozenset({POLLS_KEY, BOARDS_KEY, "agents"})  # root keys with a convention


class RoomObjects:
    """One room's objects as one caller sees and changes them."""

    def __init__(self, node: Node, principal: Principal, room: str) -> None:
        self.node = node
        self.principal = principal
        self.room = room
        self.objects: dict[str, ObjectState] = {}

    async def sync(self) -> RoomObjects:
        self.objects = (await self.node.objects(self.principal, self.room)).objects
        return self

    def entries(self, object_id: str) -> dict[str, Any]:
        state = self.objects.get(object_id)
        if state is None or state.type != "map" or not isinstance(state.entries, dict):
            return {}
        return state.entries

    def target(self, value: Any) -> dict[str, Any] | None:
        """The entries of the map ``value`` refers to, if it is a reference to a map."""
        object_id = reference(value)
        if object_id is None or object_id not in self.objects:
            return None
        return self.entries(object_id)

    async def apply(self, op: ObjectOp) -> str | None:
        try:  # the checks of the wire (key names, values) as for any client
            op = msgspec.convert(msgspec.to_builtins(op), ObjectOp)
        except msgspec.ValidationError as exc:
            raise BadRequest(str(exc)) from None
        ok = await self.node.object_op(self.principal, self.room, op, what="the operation")
        return ok.object_id if isinstance(ok.object_id, str) else None

    async def create_map(self, entries: dict[str, Any]) -> dict[str, str]:
        object_id = await self.apply(MapCreate(entries=entries))
        assert object_id is not None, "a create always names its object"
        return {"object_id": object_id}

    async def index(self, key: str) -> str:
        """``root.<key>``'s map, made on first use (as ``client/polls.ensure_index``)."""
        found = reference(self.entries(ROOT).get(key))
        if found is not None and found in self.objects:
            return found
        made = await self.create_map({})
        await self.apply(MapSet(object_id=ROOT, key=key, value=made))
        return made["object_id"]

    def kind(self, kind: str) -> list[str]:
        """The ids of the ``kind`` maps listed in ``root.<kind>s``, oldest first."""
        index = self.target(self.entries(ROOT).get(kind + "s")) or {}
        found = [oid for oid in index if self.entries(oid).get("kind") == kind]
        return sorted(found, key=_created_serial)


def _created_serial(object_id: str) -> int:
    tail = object_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"`{name}` must be a non-empty string")
    return value.strip()


async def create_poll(room: RoomObjects, question: Any, options: Any) -> dict[str, Any]:
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise BadRequest("`options` must be a list of strings")
    labels = [label.strip() for label in options if label.strip()]
    if len(labels) < 2:
        raise BadRequest("a poll needs at least 2 options")
    asked = _text(question, "question")
    await room.sync()
    option_ids = {f"opt-{i + 1}": label for i, label in enumerate(labels)}
    option_map = await room.create_map(option_ids)
    votes = await room.create_map({})
    poll = await room.create_map(
        {
            "kind": "poll",
            "question": asked,
            "options": option_map,
            "votes": votes,
            "closed": False,
            "created_by": room.principal.client_id,
        }
    )
    index = await room.index(POLLS_KEY)
    await room.apply(MapSet(object_id=index, key=poll["object_id"], value=poll))
    return {"poll_id": poll["object_id"], "question": asked, "options": option_ids}


def _find_poll(room: RoomObjects, poll: str) -> str:
    polls = room.kind("poll")
    if not polls:
        raise NotFound(f"there is no poll in {room.room}")
    if poll in ("", "latest"):
        return polls[-1]
    for poll_id in polls:
        if poll in (poll_id, room.entries(poll_id).get("question")):
            return poll_id
    raise NotFound(f"no poll {poll!r} in {room.room}; polls: {polls}")


async def vote(room: RoomObjects, option: Any, poll: Any) -> dict[str, Any]:
    wanted = _text(option, "option")
    await room.sync()
    poll_id = _find_poll(room, poll.strip() if isinstance(poll, str) else "")
    entries = room.entries(poll_id)
    options = room.target(entries.get("options")) or {}
    option_id = next(
        (
            oid
            for oid, label in options.items()
            if wanted == oid or str(label).strip().lower() == wanted.lower()
        ),
        None,
    )
    if option_id is None:
        raise NotFound(f"poll {poll_id} has no option {wanted!r}; options: {options}")
    if entries.get("closed"):
        raise Conflict(f"poll {poll_id} is closed")
    votes = reference(entries.get("votes"))
    if votes is None:
        raise NotFound(f"poll {poll_id} has no votes map")
    await room.apply(MapSet(object_id=votes, key=room.principal.client_id, value=option_id))
    return {"poll_id": poll_id, "voted": option_id}


def new_item_id() -> str:
    """As ``client/boards.new_item_id``: sorts in creation order."""
    return f"{time.time_ns() // 1_000_000:013d}-{secrets.token_hex(3)}"


async def add_to_board(room: RoomObjects, text: Any, board: Any) -> dict[str, Any]:
    item_text = _text(text, "text")
    title = board.strip() if isinstance(board, str) and board.strip() else "Notes"
    await room.sync()
    board_id = next(
        (b for b in room.kind("board") if title in (b, room.entries(b).get("title"))), None
    )
    if board_id is None:
        items = await room.create_map({})
        made = await room.create_map({"kind": "board", "title": title, "items": items})
        index = await room.index(BOARDS_KEY)
        await room.apply(MapSet(object_id=index, key=made["object_id"], value=made))
        board_id = made["object_id"]
        await room.sync()
    items_id = reference(room.entries(board_id).get("items"))
    if items_id is None:
        raise NotFound(f"board {board_id} has no items map")
    item_id = new_item_id()
    item = {
        "text": item_text,
        "author": room.principal.client_id,
        "ts": time.time_ns() // 1_000_000,
        "done": False,
    }
    await room.apply(MapSet(object_id=items_id, key=item_id, value=item))
    return {"board_id": board_id, "item_id": item_id}


def _shown(room: RoomObjects, value: Any) -> Any:
    object_id = reference(value)
    state = room.objects.get(object_id) if object_id is not None else None
    if state is None:
        return value
    return state.entries if state.type == "map" else state.value


async def get_shared(room: RoomObjects, key: Any) -> Any:
    await room.sync()
    root = room.entries(ROOT)
    if isinstance(key, str) and key:
        if key not in root:
            raise NotFound(f"{room.room} has no shared value {key!r}")
        return {"key": key, "value": _shown(room, root[key])}
    return {k: _shown(room, v) for k, v in root.items() if k not in RESERVED_KEYS}


async def set_shared(room: RoomObjects, key: Any, value: Any) -> dict[str, Any]:
    name = _text(key, "key")
    if name in RESERVED_KEYS:
        raise BadRequest(f"`{name}` is kept for the room's {name}; use their tools")
    await room.apply(MapSet(object_id=ROOT, key=name, value=value))
    return {"key": name, "value": value}


__all__ = [
    "RESERVED_KEYS",
    "RoomObjects",
    "add_to_board",
    "create_poll",
    "get_shared",
    "set_shared",
    "vote",
]
