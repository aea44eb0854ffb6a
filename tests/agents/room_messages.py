"""Room messages as the store holds them, for the agent tests (defaults: a plain text message
from alice)."""

from __future__ import annotations

from typing import Any

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
