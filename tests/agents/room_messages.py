"""Room messages for the agent tests: as the store holds them (defaults: a plain text message
from alice), and an agent's answer as a room shows it."""

from __future__ import annotations

import asyncio
from typing import Any

from roomcast.client import Channel
from roomcast.protocol.messages import Message


def message(text: Any = "hi", *, serial: int = 5, by: str = "alice", **fields: Any) -> Message:
    """A complete ``text`` message; ``fields`` set any other Message field."""
    values: dict[str, Any] = {
        "msg_serial": serial,
        "id": None,
        "client_id": by,
        "name": "text",
        "data": text,
        "extras": {},
        "timestamp": 0,
        "updated_at": 0,
        "status": "complete",
    }
    values.update(fields)
    return Message(**values)


async def settled_answer(room: Channel, by: str = "assistant", within: float = 30) -> Message:
    """The first message of agent ``by`` in ``room`` once it is no longer streaming."""
    async with asyncio.timeout(within):
        while True:
            async for page in room.history(limit=50):
                done = [m for m in page.messages if m.client_id == by and m.status != "streaming"]
                if done:
                    return done[0]
                break
            await asyncio.sleep(0.1)
