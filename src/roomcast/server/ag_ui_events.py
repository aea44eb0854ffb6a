"""AG-UI events made from a room's messages (docs/ag-ui.md).

No I/O here: :class:`RunEvents` turns the room's events, presence and live objects into
the events of one AG-UI run (``ag_ui.core``'s types, encoded by ``ag_ui.encoder``), and
:func:`snapshot_messages` turns a page of history into the AG-UI messages those events
make, so a front end that resumed from a snapshot holds what one that read the stream
holds.

Ids: a message keeps the id it was published with (an AG-UI front end's own message id),
else it is ``msg-<msg_serial>``; a tool message is the call ``tool-<msg_serial>`` and its
result ``result-<msg_serial>``. The state is the room's live objects as one document
(:func:`~roomcast.protocol.objects.plain_state`: a map as its entries, a counter as its
value, the form the ``ag-ui`` agent provider sends too), and each change replaces one
object (``{"op": "add", "path": "/<object_id>", "value": ...}``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from ag_ui.core import (
    AssistantMessage,
    BaseEvent,
    CustomEvent,
    FunctionCall,
    MessagesSnapshotEvent,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunStartedEvent,
    StateDeltaEvent,
    StateSnapshotEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    ToolCall,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
    ToolMessage,
    UserMessage,
)
from ag_ui.core import Message as AgUiMessage
from ag_ui.encoder import EventEncoder

from roomcast.protocol.answering import SILENT, agent_info, message_text
from roomcast.protocol.messages import (
    FINAL_STATUSES,
    Event,
    Message,
    ObjectState,
    PresenceEvent,
    Reply,
)
from roomcast.protocol.objects import apply_event as apply_object_event
from roomcast.protocol.objects import plain, plain_state, with_root
from roomcast.protocol.rollup import apply_event, message_from_create

from .ai_sdk_chunks import answer_key

PRESENCE = "roomcast.presence"
"""The ``CUSTOM`` event of a presence change: ``{op, client_id, data}``."""

_ENCODER = EventEncoder()


def encode(events: Iterable[BaseEvent]) -> bytes:
    """Events as AG-UI's own encoder writes them: ``data: <JSON>`` lines of SSE."""
    return "".join(_ENCODER.encode(event) for event in events).encode()


def message_id(message: Message) -> str:
    return message.id or f"msg-{message.msg_serial}"


def tool_call_id(message: Message) -> str:
    return f"tool-{message.msg_serial}"


def speaker(message: Message) -> str:
    """The agent's name for an answer, else the author's client_id."""
    info = agent_info(message)
    name = info.get("name") if info is not None else None
    return name if isinstance(name, str) else message.client_id or "someone"


def is_agent(message: Message) -> bool:
    return agent_info(message) is not None


def state_of(objects: Mapping[str, ObjectState]) -> dict[str, Any]:
    """The room's live objects as AG-UI state (the root map is always there)."""
    return plain_state(with_root(objects))


def _tool(message: Message) -> tuple[str, str, str, bool]:
    """A tool message's ``(tool name, arguments JSON, result text, failed)``."""
    data = message.data if isinstance(message.data, dict) else {}
    name = data.get("tool")
    arguments = data.get("arguments")
    result = data.get("result")
    text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
    return (
        name if isinstance(name, str) else "tool",
        json.dumps(arguments if arguments is not None else {}, ensure_ascii=False),
        text,
        data.get("error") is True,
    )


def tool_events(message: Message) -> list[BaseEvent]:
    """A tool message (``{tool, arguments, result, error}``) as a whole tool call."""
    call_id = tool_call_id(message)
    name, arguments, result, failed = _tool(message)
    return [
        ToolCallStartEvent(tool_call_id=call_id, tool_call_name=name),
        ToolCallArgsEvent(tool_call_id=call_id, delta=arguments),
        ToolCallEndEvent(tool_call_id=call_id),
        ToolCallResultEvent(
            message_id=f"result-{message.msg_serial}",
            tool_call_id=call_id,
            content=f"error: {result}" if failed else result,
            role="tool",
        ),
    ]


def snapshot_messages(messages: Iterable[Message]) -> list[AgUiMessage]:
    """A page of history (oldest first) as AG-UI messages: people's text as ``user``
    messages named by client_id, agents' answers as ``assistant`` messages named by the
    agent, each tool message as an assistant tool call and its ``tool`` result. Deleted
    messages, silence markers and other kinds of message are left out."""
    out: list[AgUiMessage] = []
    for message in messages:
        if message.deleted or message.name not in ("text", "tool"):
            continue
        if message.name == "tool":
            call_id = tool_call_id(message)
            name, arguments, result, failed = _tool(message)
            call = ToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments))
            out.append(AssistantMessage(id=call_id, name=speaker(message), tool_calls=[call]))
            error = result if failed else None
            out.append(
                ToolMessage(
                    id=f"result-{message.msg_serial}",
                    tool_call_id=call_id,
                    content=result,
                    error=error,
                )
            )
        elif is_agent(message):
            out.append(
                AssistantMessage(
                    id=message_id(message), name=speaker(message), content=message_text(message)
                )
            )
        else:
            out.append(
                UserMessage(
                    id=message_id(message),
                    name=message.client_id or "someone",
                    content=message_text(message),
                )
            )
    return out


def _escape(object_id: str) -> str:
    """An object id as a JSON Pointer segment (RFC 6901)."""
    return object_id.replace("~", "~0").replace("/", "~1")


class RunEvents:
    """The events of one AG-UI run: the answers to one message, and what else happens in
    the room meanwhile (other people's messages, presence, live-object changes).

    ``expected`` are the agents the run waits for: it is :attr:`done` once each of them
    answered (and the answer ended) or said it stays silent. ``known`` are the ids of the
    messages the front end holds already (its input, or the snapshot it was sent): they
    are not sent again. Object events up to ``state_serial`` are in ``objects`` already.
    """

    headers: ClassVar[list[tuple[bytes, bytes]]] = [
        (b"content-type", _ENCODER.get_content_type().encode()),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
    ]

    def __init__(
        self,
        *,
        channel: str,
        thread_id: str,
        run_id: str,
        asked: tuple[int, str | None] | None,
        expected: Iterable[str],
        objects: Mapping[str, ObjectState],
        state_serial: int,
        known: Iterable[str] = (),
        snapshot: Sequence[AgUiMessage] | None = None,
    ) -> None:
        self._channel = channel
        self.thread_id = thread_id
        self.run_id = run_id
        self.asked = asked
        self._waiting = set(expected)
        self.objects = dict(objects)
        self.state_serial = state_serial
        self.known = set(known)
        self.snapshot = snapshot
        self.open: dict[int, tuple[Message, str]] = {}  # text streaming to the front end
        self.answers: dict[int, Message] = {}  # the answers to the message, as they stand
        self.given_up: str | None = None

    # ------------------------------------------------------------------ Translator

    @property
    def channel(self) -> str:
        return self._channel

    @property
    def waiting(self) -> set[str]:
        return self._waiting

    @property
    def done(self) -> bool:
        return not self._waiting and not any(serial in self.answers for serial in self.open)

    def describe(self) -> str:
        return f"AG-UI run on {self.channel}"

    def head(self) -> bytes:
        events: list[BaseEvent] = [
            RunStartedEvent(thread_id=self.thread_id, run_id=self.run_id),
            StateSnapshotEvent(snapshot=state_of(self.objects)),
        ]
        if self.snapshot is not None:
            events.append(MessagesSnapshotEvent(messages=list(self.snapshot)))
        return encode(events)

    def feed(self, message: Reply) -> bytes:
        return encode(self.events(message))

    def give_up(self, why: str) -> None:
        self._waiting.clear()
        self.given_up = why

    def finish(self) -> bytes:
        return encode([*self._close_open(), self._outcome()])

    def cut_short(self, reason: str) -> bytes:
        return encode([*self._close_open(), RunErrorEvent(message=reason)])

    # ------------------------------------------------------------------ events

    def events(self, message: Reply) -> list[BaseEvent]:
        """The AG-UI events one message of the room makes."""
        if isinstance(message, PresenceEvent):
            value = {"op": message.op, "client_id": message.client_id, "data": message.data}
            return [CustomEvent(name=PRESENCE, value=value)]
        if not isinstance(message, Event):
            return []
        if message.type == "object":
            return self._object(message)
        if message.type == "create":
            return self._created(message_from_create(message))
        target = message.msg_serial
        if not isinstance(target, int) or target not in self.open:
            return []
        current = apply_event(self.open[target][0], message)
        if target in self.answers:
            self.answers[target] = current
        return self._text(current)

    def _object(self, event: Event) -> list[BaseEvent]:
        if event.serial <= self.state_serial:
            return []  # in the snapshot already
        object_id = apply_object_event(self.objects, event)
        value = plain(self.objects[object_id])
        patch = [{"op": "add", "path": "/" + _escape(object_id), "value": value}]
        return [StateDeltaEvent.model_validate({"type": "STATE_DELTA", "delta": patch})]

    def _created(self, message: Message) -> list[BaseEvent]:
        ours = self.asked is not None and answer_key(message) == self.asked
        if self.asked is not None and message.msg_serial == self.asked[0]:
            return []  # the message asked: the front end sent it
        if message.name == SILENT or message_id(message) in self.known:
            if ours:
                self._waiting.discard(message.client_id or "")
            return []
        if message.name == "tool":
            return tool_events(message)
        if message.name != "text" or message.deleted:
            return []
        if ours:
            self._waiting.discard(message.client_id or "")
            self.answers[message.msg_serial] = message
        self.open[message.msg_serial] = (message, "")
        start = TextMessageStartEvent(
            message_id=message_id(message),
            role="assistant" if is_agent(message) else "user",
            name=speaker(message),
        )
        return [start, *self._text(message)]

    def _text(self, message: Message) -> list[BaseEvent]:
        """The text the message holds beyond what was sent, and its end once final."""
        _, sent = self.open[message.msg_serial]
        text = sent if message.deleted else message_text(message)
        out: list[BaseEvent] = []
        if len(text) > len(sent) and text.startswith(sent):
            delta = text[len(sent) :]
            out.append(TextMessageContentEvent(message_id=message_id(message), delta=delta))
            sent = text
        self.open[message.msg_serial] = (message, sent)
        if message.status in FINAL_STATUSES or message.deleted:
            del self.open[message.msg_serial]
            out.append(TextMessageEndEvent(message_id=message_id(message)))
        return out

    def _close_open(self) -> list[BaseEvent]:
        """Ends the text messages still streaming (other people's, at the run's end)."""
        out: list[BaseEvent] = [
            TextMessageEndEvent(message_id=message_id(message)) for message, _ in self.open.values()
        ]
        self.open.clear()
        return out

    def _outcome(self) -> BaseEvent:
        """``RUN_ERROR`` if an answer failed (or an agent never came), else ``RUN_FINISHED``,
        with the outcome ``cancelled`` if one was stopped."""
        failures = [
            f"{speaker(m)}: {m.extras.get('failure', 'failed')}"
            for m in self.answers.values()
            if m.status == "failed"
        ]
        if self.given_up is not None:
            failures.append(self.given_up)
        if failures:
            return RunErrorEvent(message="; ".join(failures))
        if any(m.status == "cancelled" for m in self.answers.values()):
            return RunFinishedEvent(
                thread_id=self.thread_id,
                run_id=self.run_id,
                outcome=RunFinishedCancelledOutcome(),
            )
        return RunFinishedEvent(thread_id=self.thread_id, run_id=self.run_id)


__all__ = [
    "PRESENCE",
    "RunEvents",
    "encode",
    "message_id",
    "snapshot_messages",
    "state_of",
    "tool_events",
]
