"""Boards (docs/protocol.md §5 conventions): notes, lists of ideas, a garden plan.

A board is a map ``{kind: "board", title, items}``: ``items`` references a map item_id →
``{text, author, ts, done}``. Item ids sort in creation order (a millisecond timestamp, then
random hex). Boards are listed in ``root.boards``, a map board_id → reference, where board_id
is the board map's object_id.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from roomcast.protocol.errors import BadRequest, NotFound

from .objects import LiveMap, LiveObjects
from .polls import ensure_index, me
from .session import Session

BOARDS_KEY = "boards"


@dataclass(frozen=True, slots=True)
class BoardItem:
    item_id: str
    text: str
    author: str | None
    ts: int
    done: bool


@dataclass(frozen=True, slots=True)
class Board:
    board_id: str
    title: str
    items: list[BoardItem]  # in creation order


def new_item_id() -> str:
    """Sorts in creation order: 13 digits of milliseconds, then 6 random hex digits (items
    that two clients make within the same millisecond sort by that random part)."""
    return f"{time.time_ns() // 1_000_000:013d}-{secrets.token_hex(3)}"


class Boards:
    """``channel.boards``: create boards, add, check off and remove items."""

    def __init__(self, objects: LiveObjects, client: Session) -> None:
        self._objects = objects
        self._client = client

    async def create(self, title: str) -> Board:
        if not title.strip():
            raise BadRequest("a board needs a title")
        objects = self._objects
        await objects.sync()
        items = await objects.create_map({})
        board = await objects.create_map({"kind": "board", "title": title.strip(), "items": items})
        index = await ensure_index(objects, BOARDS_KEY)
        await index.set(board.object_id, board)
        return self.get(board.object_id)

    async def add_item(self, board_id: str, text: str) -> str:
        """Add an item; returns its item_id."""
        if not text.strip():
            raise BadRequest("an item needs text")
        await self._objects.sync()
        item_id = new_item_id()
        item = {"text": text.strip(), "author": me(self._client), "ts": _now_ms(), "done": False}
        await self._items(board_id).set(item_id, item)
        return item_id

    async def set_done(self, board_id: str, item_id: str, done: bool = True) -> None:
        await self._update(board_id, item_id, done=done)

    async def edit_item(self, board_id: str, item_id: str, text: str) -> None:
        await self._update(board_id, item_id, text=text.strip())

    async def remove_item(self, board_id: str, item_id: str) -> None:
        await self._objects.sync()
        await self._items(board_id).remove(item_id)

    def get(self, board_id: str) -> Board:
        board = self._board(board_id)
        items = board.get("items")
        entries = items.entries() if isinstance(items, LiveMap) else {}
        return Board(
            board_id=board_id,
            title=str(board.get("title", "")),
            items=[_item(item_id, value) for item_id, value in sorted(entries.items())],
        )

    def list(self) -> list[Board]:
        root = self._objects.get("root")
        assert isinstance(root, LiveMap)
        index = root.get(BOARDS_KEY)
        if not isinstance(index, LiveMap):
            return []
        return [self.get(board_id) for board_id in index.keys() if self._is_board(board_id)]

    async def _update(self, board_id: str, item_id: str, **changes: Any) -> None:
        await self._objects.sync()
        items = self._items(board_id)
        current = items.get(item_id)
        if not isinstance(current, dict):
            raise NotFound(f"board {board_id} has no item {item_id}")
        await items.set(item_id, {**current, **changes})

    def _is_board(self, board_id: str) -> bool:
        try:
            self._board(board_id)
        except NotFound:
            return False
        return True

    def _board(self, board_id: str) -> LiveMap:
        found = self._objects.get(board_id)
        if not isinstance(found, LiveMap) or found.get("kind") != "board":
            raise NotFound(f"no board {board_id}")
        return found

    def _items(self, board_id: str) -> LiveMap:
        items = self._board(board_id).get("items")
        if not isinstance(items, LiveMap):
            raise NotFound(f"board {board_id} has no items map")
        return items


def _item(item_id: str, value: Any) -> BoardItem:
    value = value if isinstance(value, dict) else {"text": str(value)}
    author = value.get("author")
    ts = value.get("ts")
    return BoardItem(
        item_id=item_id,
        text=str(value.get("text", "")),
        author=author if isinstance(author, str) else None,
        ts=ts if isinstance(ts, int) else 0,
        done=bool(value.get("done", False)),
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


__all__ = ["BOARDS_KEY", "Board", "BoardItem", "Boards", "new_item_id"]
