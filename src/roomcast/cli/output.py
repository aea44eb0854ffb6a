"""What the client commands print: events and messages one line each (or as JSON), and
live objects as a tree."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from rich.cells import cell_len


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
    """``msg_serial client_id [status] data`` on one line (the status unless complete)."""
    who = message.client_id if message.client_id is not None else "-"
    status = "" if message.status == "complete" else f" [{message.status}]"
    data = "(deleted)" if message.deleted else one_line(message.data)
    return f"{message.msg_serial} {who}{status} {data}"


def message_block(message: Any) -> str:
    """A message for people: as :func:`message_line`, but text as it is (continuation lines
    indented under the first) and the status with who cancelled it or why it failed."""
    who = message.client_id if message.client_id is not None else "-"
    status = "" if message.status == "complete" else f"[{status_label(message)}] "
    head = f"{message.msg_serial} {who} {status}"
    return (head + "(deleted)") if message.deleted else text_block(head, message.data)


def status_label(message: Any) -> str:
    """``complete``, ``streaming``, ``cancelled by X`` or ``failed: reason``: how a message
    (or anything with ``status``, ``cancelled_by`` and ``extras``) ended."""
    if message.status == "cancelled" and message.cancelled_by:
        return f"cancelled by {message.cancelled_by}"
    failure = message.extras.get("failure") if isinstance(message.extras, dict) else None
    if message.status == "failed" and failure:
        return f"failed: {one_line(failure)}"
    return str(message.status)


def text_block(head: str, data: Any) -> str:
    """``head`` then ``data``: text as it is, each further line indented to line up with the
    first (trailing newlines dropped, control characters escaped); other data as JSON."""
    if not isinstance(data, str):
        return head + one_line(data)
    lines = [visible(line) for line in data.rstrip("\n").split("\n")]
    return head + ("\n" + " " * cell_len(head)).join(lines)


def visible(line: str) -> str:
    """``line`` safe to print: tabs expanded, other control characters escaped as in JSON
    (a message must not move a reader's cursor or change its colours)."""
    line = line.expandtabs(4)
    if line.isprintable():
        return line
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in line)


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
