"""What the client commands print: events and messages one line each (or as JSON), and
live objects as a tree."""

from __future__ import annotations

import json
from typing import Any

import msgspec


def one_line(data: Any) -> str:
    """``data`` on one line: plain text as it is, anything else as compact JSON."""
    if isinstance(data, str) and data.isprintable():
        return data
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def json_line(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def event_line(event: Any) -> str:
    """``serial client_id data`` for a message; other events say what they change."""
    who = event.client_id if event.client_id is not None else "-"
    if event.type == "create":
        return f"{event.serial} {who} {one_line(event.data)}"
    fields = msgspec.structs.asdict(event)
    details = {
        k: v
        for k, v in fields.items()
        if v is not msgspec.UNSET
        and k not in ("channel", "serial", "type", "msg_serial", "client_id", "timestamp")
    }
    target = f" #{event.msg_serial}" if isinstance(event.msg_serial, int) else ""
    return f"{event.serial} {who} [{event.type}{target}] {one_line(details)}"


def message_line(message: Any) -> str:
    who = message.client_id if message.client_id is not None else "-"
    status = "" if message.status == "complete" else f" [{message.status}]"
    data = "(deleted)" if message.deleted else one_line(message.data)
    return f"{message.msg_serial} {who}{status} {data}"


def expand_object(states: dict[str, Any], object_id: str, shown: set[str]) -> Any:
    """An object with the references in it replaced by what they name (each object once)."""
    shown.add(object_id)
    state = states[object_id]
    if state["type"] == "counter":
        return state.get("value", 0)
    out: dict[str, Any] = {}
    for key, value in state.get("entries", {}).items():
        target = value.get("object_id") if isinstance(value, dict) and len(value) == 1 else None
        if isinstance(target, str) and target in states and target not in shown:
            out[key] = expand_object(states, target, shown)
        else:
            out[key] = value
    return out
