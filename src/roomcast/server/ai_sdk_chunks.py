"""The AI SDK's UI message stream, made from a room's messages (docs/ai-sdk.md).

No I/O here: :class:`ReplyChunks` turns the events of the answers to one message into UI
message chunks (``start``, ``data-author``, ``text-*``, ``tool-*``, then ``finish``,
``abort`` or ``error``), and :func:`ui_messages` turns a page of history into the
``UIMessage``s the same chunks make, so a chat loaded from history and a chat that read
the stream hold the same messages.

One reply is one assistant ``UIMessage`` (``useChat`` renders one per stream), id
``reply-<msg_serial of the message>``, or ``reply-<msg_serial>-<id>`` for the answers to
an ``agent.regenerate``. Each agent answer in it is a ``data-author`` part (id: the
answer's msg_serial; data: ``{name, provider, model, msg_serial, status}``, plus
``cancelled_by`` and ``failure`` when set) followed by a text part; each tool message
is a ``dynamic-tool`` part.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from roomcast.protocol.answering import (
    REGENERATE_KEY,
    SILENT,
    agent_info,
    message_text,
    reply_to,
)
from roomcast.protocol.messages import FINAL_STATUSES, Event, Message
from roomcast.protocol.rollup import apply_event, message_from_create

Chunk = dict[str, Any]

_REPLY_ID = re.compile(r"reply-([0-9]{1,16})(?:-([0-9a-f]{1,32}))?")
_USER_ID = re.compile(r"msg-([0-9]{1,16})")


def reply_id(msg_serial: int, again: str | None) -> str:
    """The ``UIMessage`` id of the answers to ``msg_serial`` (asked ``again``: its id)."""
    return f"reply-{msg_serial}" if again is None else f"reply-{msg_serial}-{again}"


def parse_reply_id(message_id: str) -> tuple[int, str | None] | None:
    """``(msg_serial, again)`` of an id made by :func:`reply_id`, else None."""
    match = _REPLY_ID.fullmatch(message_id)
    if match is None:
        return None
    return int(match.group(1)), match.group(2)


def parse_user_id(message_id: str) -> int | None:
    """The msg_serial of a person's message id from :func:`ui_messages` (``msg-N``)."""
    match = _USER_ID.fullmatch(message_id)
    return int(match.group(1)) if match is not None else None


def answer_key(message: Message) -> tuple[int, str | None] | None:
    """``(reply_to, regenerate)`` of an agent's answer, tool call or silence; else None."""
    target = reply_to(message)
    if target is None or agent_info(message) is None:
        return None
    again = message.extras.get(REGENERATE_KEY)
    return target, again if isinstance(again, str) else None


def reply_metadata(channel: str, msg_serial: int, again: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"room": channel, "reply_to": msg_serial}
    if again is not None:
        metadata["regenerate"] = again
    return metadata


def author(message: Message) -> dict[str, Any]:
    """The ``data-author`` data of an answer: who speaks, and how the answer stands."""
    info = agent_info(message) or {}
    data: dict[str, Any] = {
        "name": info.get("name", message.client_id),
        "provider": info.get("provider"),
        "model": info.get("model"),
        "msg_serial": message.msg_serial,
        "status": message.status,
    }
    if message.cancelled_by is not None:
        data["cancelled_by"] = message.cancelled_by
    failure = message.extras.get("failure")
    if isinstance(failure, str):
        data["failure"] = failure
    return data


def author_chunk(message: Message) -> Chunk:
    return {"type": "data-author", "id": str(message.msg_serial), "data": author(message)}


def tool_chunks(message: Message) -> list[Chunk]:
    """A ``tool`` message (``{tool, arguments, result, error}``) as a dynamic tool call."""
    data = message.data if isinstance(message.data, dict) else {}
    call_id = f"tool-{message.msg_serial}"
    name = data.get("tool")
    started: Chunk = {
        "type": "tool-input-available",
        "toolCallId": call_id,
        "toolName": name if isinstance(name, str) else "tool",
        "input": data.get("arguments"),
        "dynamic": True,
    }
    result = data.get("result")
    if data.get("error") is True:
        text = result if isinstance(result, str) else message_text(message)
        return [
            started,
            {
                "type": "tool-output-error",
                "toolCallId": call_id,
                "errorText": text,
                "dynamic": True,
            },
        ]
    return [
        started,
        {"type": "tool-output-available", "toolCallId": call_id, "output": result, "dynamic": True},
    ]


class ReplyChunks:
    """The chunks of the answers to one message, from the room's events in serial order.

    ``expected`` are the agents the reply waits for: it is :attr:`done` once each of them
    answered (and the answer ended) or said it stays silent, and every answer it showed
    has ended. Answers of other agents that arrive meanwhile are shown too.
    """

    def __init__(
        self, channel: str, msg_serial: int, again: str | None, expected: Iterable[str]
    ) -> None:
        self.channel = channel
        self.msg_serial = msg_serial
        self.again = again
        self.waiting = set(expected)
        self.answers: dict[int, Message] = {}  # msg_serial → the answer as it stands
        self._sent: dict[int, str] = {}  # text sent of each answer still open
        self.given_up: str | None = None

    @property
    def message_id(self) -> str:
        return reply_id(self.msg_serial, self.again)

    @property
    def done(self) -> bool:
        return not self.waiting and not self._sent

    def start(self) -> Chunk:
        return {
            "type": "start",
            "messageId": self.message_id,
            "messageMetadata": reply_metadata(self.channel, self.msg_serial, self.again),
        }

    def feed(self, event: Event) -> list[Chunk]:
        """The chunks ``event`` makes (none for an event of another message)."""
        if event.type == "create":
            return self._created(message_from_create(event))
        target = event.msg_serial
        if not isinstance(target, int) or target not in self._sent:
            return []
        message = self.answers[target] = apply_event(self.answers[target], event)
        out = self._delta(message)
        if message.status in FINAL_STATUSES or message.deleted:
            out += self._end(message)
        return out

    def _created(self, message: Message) -> list[Chunk]:
        if answer_key(message) != (self.msg_serial, self.again):
            return []
        if message.name == SILENT:
            self.waiting.discard(message.client_id or "")
            return []
        if message.name == "tool":
            return tool_chunks(message)
        if message.name != "text":
            return []
        self.waiting.discard(message.client_id or "")
        self.answers[message.msg_serial] = message
        self._sent[message.msg_serial] = ""
        out = [author_chunk(message), {"type": "text-start", "id": _text_id(message)}]
        out += self._delta(message)
        if message.status in FINAL_STATUSES:
            out += self._end(message)
        return out

    def _delta(self, message: Message) -> list[Chunk]:
        """Text the answer holds beyond what was sent (an ``update`` in a replay may
        carry the whole text so far)."""
        sent = self._sent[message.msg_serial]
        text = message_text(message) if not message.deleted else sent
        if len(text) <= len(sent) or not text.startswith(sent):
            return []
        self._sent[message.msg_serial] = text
        return [{"type": "text-delta", "id": _text_id(message), "delta": text[len(sent) :]}]

    def _end(self, message: Message) -> list[Chunk]:
        del self._sent[message.msg_serial]
        return [{"type": "text-end", "id": _text_id(message)}, author_chunk(message)]

    def give_up(self, why: str) -> None:
        """Stop waiting for the agents that have not shown up (their answers, if they
        come, are in the room's history)."""
        self.waiting.clear()
        self.given_up = why

    def finish(self) -> list[Chunk]:
        """The last chunk: ``error`` if an answer failed (or an agent never came), else
        ``abort`` if one was stopped, else ``finish``."""
        failures = [
            f"{author(m)['name']}: {m.extras.get('failure', 'failed')}"
            for m in self.answers.values()
            if m.status == "failed"
        ]
        if self.given_up is not None:
            failures.append(self.given_up)
        if failures:
            return [{"type": "error", "errorText": "; ".join(failures)}]
        stopped = [m for m in self.answers.values() if m.status == "cancelled"]
        if stopped:
            who = stopped[0].cancelled_by
            return [{"type": "abort", "reason": f"stopped by {who}" if who else "stopped"}]
        return [{"type": "finish", "finishReason": "stop"}]


def _text_id(message: Message) -> str:
    return f"text-{message.msg_serial}"


def text_part(message: Message) -> dict[str, Any]:
    state = "streaming" if message.status == "streaming" else "done"
    return {"type": "text", "text": message_text(message), "state": state}


def tool_part(message: Message) -> dict[str, Any]:
    """The ``dynamic-tool`` part that :func:`tool_chunks` make in a ``UIMessage``."""
    [started, ended] = tool_chunks(message)
    part = {
        "type": "dynamic-tool",
        "toolName": started["toolName"],
        "toolCallId": started["toolCallId"],
        "input": started["input"],
    }
    if ended["type"] == "tool-output-error":
        return {**part, "state": "output-error", "errorText": ended["errorText"]}
    return {**part, "state": "output-available", "output": ended["output"]}


def ui_messages(channel: str, messages: Iterable[Message]) -> list[dict[str, Any]]:
    """A page of history (oldest first) as ``UIMessage``s: people's text messages as
    ``user`` (id ``msg-<msg_serial>``, metadata ``{client_id, msg_serial, timestamp}``),
    the answers to each message as one ``assistant`` message placed where the first of
    them is, an agent's message that answers nothing as an ``assistant`` message of its
    own. Deleted messages, silence markers and other kinds of message are left out."""
    out: list[dict[str, Any]] = []
    replies: dict[tuple[int, str | None], dict[str, Any]] = {}
    for message in messages:
        if message.deleted or message.name not in ("text", "tool"):
            continue
        key = answer_key(message)
        if key is None:
            if message.name == "text":
                out.append(_standalone(message))
            continue
        reply = replies.get(key)
        if reply is None:
            reply = replies[key] = {
                "id": reply_id(*key),
                "role": "assistant",
                "parts": [],
                "metadata": reply_metadata(channel, *key),
            }
            out.append(reply)
        if message.name == "tool":
            reply["parts"].append(tool_part(message))
        else:
            reply["parts"] += [{**author_chunk(message)}, text_part(message)]
    return out


def _standalone(message: Message) -> dict[str, Any]:
    if agent_info(message) is not None:
        return {
            "id": f"msg-{message.msg_serial}",
            "role": "assistant",
            "parts": [author_chunk(message), text_part(message)],
        }
    return {
        "id": f"msg-{message.msg_serial}",
        "role": "user",
        "parts": [{"type": "text", "text": message_text(message)}],
        "metadata": {
            "client_id": message.client_id,
            "msg_serial": message.msg_serial,
            "timestamp": message.timestamp,
        },
    }


__all__ = [
    "Chunk",
    "ReplyChunks",
    "answer_key",
    "parse_reply_id",
    "parse_user_id",
    "reply_id",
    "ui_messages",
]
