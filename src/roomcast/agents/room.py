"""One room as one agent sees it: its channel, its answer queue, its running answers, and
what the agent reads of the room's history and live objects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from roomcast.client import Channel, LiveMap, Message, MessageStream
from roomcast.protocol.errors import RoomcastError
from roomcast.protocol.objects import AGENTS_KEY

from .context import REPLY_DEPTH, reply_chain
from .recent import RecentMessages
from .triggers import RateWindow, agent_info, reply_to


@dataclass(slots=True)
class Room:
    """One room of one agent."""

    channel: Channel
    recent: RecentMessages  # its latest messages, for the answers' context
    queue: asyncio.Lock = field(default_factory=asyncio.Lock)
    agent_answers: RateWindow = field(default_factory=lambda: RateWindow(60))
    running: dict[int, MessageStream | None] = field(default_factory=dict)  # trigger → answer
    present: bool = False  # in the room's presence: while the agent is in the room
    presence_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # enters/leaves in order
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # set once attached (or not)
    active_at: float = field(default_factory=time.monotonic)  # its latest event or hint
    unlisten: Callable[[], None] = lambda: None  # removes the live-objects listener

    def touch(self) -> None:
        """Something happened in the room: it is not idle."""
        self.active_at = time.monotonic()

    def lists(self, name: str) -> bool:
        """Whether agent ``name`` is in the room: ``root.agents`` lists the room's agents
        once someone set it; until then every agent whose ``rooms`` match is in."""
        objects = self.channel.objects
        try:
            root = objects.get("root") if objects.serial is not None else None
        except Exception:
            root = None
        if isinstance(root, LiveMap):
            agents = root.get(AGENTS_KEY)
            if isinstance(agents, LiveMap):
                return name in agents
        return True


async def latest_messages(channel: Channel, limit: int) -> list[Message]:
    """The last ``limit`` messages of ``channel``, oldest first."""
    async for page in channel.history(limit=limit):
        return page.messages
    return []


async def message_at(channel: Channel, msg_serial: int) -> Message | None:
    """The message ``msg_serial`` of ``channel`` as it is now, or None if there is none."""
    async for page in channel.history(limit=1, direction="forwards", start=msg_serial - 1):
        found = page.messages[0] if page.messages else None
        return found if found is not None and found.msg_serial == msg_serial else None
    return None


async def full_reply_chain(
    trigger: Message, lookup: dict[int, Message], channel: Channel
) -> list[Message]:
    """The messages ``trigger`` replies to, nearest first, as :func:`reply_chain` finds
    them in ``lookup``, and read from ``channel`` where ``lookup`` has none."""
    while True:
        chain = reply_chain(trigger, lookup)
        target = reply_to(chain[-1] if chain else trigger)
        if len(chain) >= REPLY_DEPTH or target is None or target in lookup:
            return chain
        try:
            found = await message_at(channel, target)
        except RoomcastError:
            found = None
        if found is None:
            return chain
        lookup[target] = found


async def answered_by(channel: Channel, name: str, trigger: Message) -> bool:
    """Whether an answer of agent ``name`` to ``trigger`` is already in ``channel``."""
    async for page in channel.history(limit=200, direction="forwards", start=trigger.msg_serial):
        for message in page.messages:
            if (
                message.extras.get("reply_to") == trigger.msg_serial
                and message.client_id == name
                and message.name == "text"
                and agent_info(message) is not None
            ):
                return True
        break  # the answer follows its trigger closely; one page is enough
    return False


__all__ = ["Room", "answered_by", "full_reply_chain", "latest_messages", "message_at"]
