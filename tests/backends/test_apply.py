"""``apply.apply_to_stage``, the step every store applies events with, against a stage that
records what it is given: what it stages, and that a refused or repeated event stages
nothing. (The contract suite checks the same through each store.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from roomcast.backends.apply import ChannelHead, apply_to_stage
from roomcast.backends.base import StoreOptions
from roomcast.protocol.errors import BadRequest, NotFound
from roomcast.protocol.messages import Event, Message, ObjectState

CH = "room:apply"
NOW = 1_000_000
OPTIONS = StoreOptions(dedup_window_s=60.0)


@dataclass
class RecordingStage:
    """A ChannelStage over plain dicts that lists every write staged on it."""

    head: ChannelHead = field(default_factory=lambda: ChannelHead("e1"))
    keys: dict[str, int] = field(default_factory=dict)
    messages: dict[int, Message] = field(default_factory=dict)
    objects: dict[str, ObjectState] = field(default_factory=dict)
    staged: list[tuple[Any, ...]] = field(default_factory=list)
    encodable: bool = True

    def key_serial(self, key: str, now: int) -> int | None:
        return self.keys.get(key)

    def message(self, msg_serial: int) -> Message | None:
        return self.messages.get(msg_serial)

    def live_object(self, object_id: str) -> ObjectState | None:
        return self.objects.get(object_id)

    def encode(self, event: Event) -> bytes:
        if not self.encodable:
            raise BadRequest("the event cannot be stored")
        return b"body"

    def put_event(self, event: Event, body: bytes) -> None:
        self.staged.append(("event", event.serial, body))

    def put_message(self, message: Message, *, created: bool) -> None:
        self.messages[message.msg_serial] = message
        self.staged.append(("message", message.msg_serial, created))

    def put_object(self, object_id: str, state: ObjectState) -> None:
        self.objects[object_id] = state
        self.staged.append(("object", object_id))

    def put_key(self, key: str, serial: int, expires_at: int) -> None:
        self.keys[key] = serial
        self.staged.append(("key", key, serial, expires_at))


def event(type_: Any, **fields: Any) -> Event:
    return Event(channel=CH, serial=0, type=type_, client_id="alice", timestamp=0, **fields)


def test_a_create_stages_the_event_its_message_and_its_key() -> None:
    stage = RecordingStage()
    result = apply_to_stage(stage, event("create", data="hi"), "k1", options=OPTIONS, now=NOW)
    assert result.serial == 1 and not result.duplicate
    assert result.event is not None and result.event.timestamp == NOW
    assert stage.head.serial == 1
    assert stage.staged == [
        ("message", 1, True),
        ("event", 1, b"body"),
        ("key", "k1", 1, NOW + 60_000),
    ]


def test_a_change_to_a_message_stages_it_as_not_created() -> None:
    stage = RecordingStage()
    apply_to_stage(stage, event("create", data="a", streaming=True), None, options=OPTIONS, now=NOW)
    stage.staged.clear()
    appended = event("append", msg_serial=1, data="b")
    assert apply_to_stage(stage, appended, None, options=OPTIONS, now=NOW).serial == 2
    assert stage.staged == [("message", 1, False), ("event", 2, b"body")]
    assert stage.messages[1].data == "ab"


def test_an_object_operation_stages_the_object_and_counts_its_bytes() -> None:
    stage = RecordingStage()
    op = {"type": "counter.create", "value": 5}
    result = apply_to_stage(stage, event("object", op=op), None, options=OPTIONS, now=NOW)
    assert result.event is not None and isinstance(result.event.object_id, str)
    assert stage.staged == [("object", result.event.object_id), ("event", 1, b"body")]
    assert stage.head.objects_bytes > 0


def test_a_repeated_key_answers_the_first_serial_and_stages_nothing() -> None:
    stage = RecordingStage(keys={"k1": 7})
    stage.head.serial = 9
    result = apply_to_stage(stage, event("create", data="hi"), "k1", options=OPTIONS, now=NOW)
    assert (result.serial, result.event, result.duplicate) == (7, None, True)
    assert stage.staged == [] and stage.head.serial == 9


@pytest.mark.parametrize("encodable", [True, False])
def test_a_refused_event_stages_nothing(encodable: bool) -> None:
    stage = RecordingStage(encodable=encodable)
    refused = event("append", msg_serial=5, data="x") if encodable else event("create")
    with pytest.raises(NotFound if encodable else BadRequest):
        apply_to_stage(stage, refused, "k1", options=OPTIONS, now=NOW)
    assert stage.staged == [] and stage.head == ChannelHead("e1")
