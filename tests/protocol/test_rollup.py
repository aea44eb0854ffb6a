"""§2/§3: how events roll up into a message, and which ones are refused or no-ops."""

from __future__ import annotations

import pytest

from roomcast.protocol.errors import Conflict, NotFound, TooLarge
from roomcast.protocol.messages import Event
from roomcast.protocol.rollup import admit, apply_event, message_from_create


def ev(type_: str, serial: int, client: str = "alice", **fields: object) -> Event:
    return Event(
        channel="a", serial=serial, type=type_, client_id=client, timestamp=serial, **fields
    )  # type: ignore[arg-type]


def test_streamed_message_accumulates_and_final_status_is_final() -> None:
    msg = message_from_create(ev("create", 1, data="", streaming=True, extras={"a": 1}))
    assert msg.status == "streaming"
    msg = apply_event(msg, ev("append", 2, msg_serial=1, data="Hel"))
    msg = apply_event(msg, ev("append", 3, msg_serial=1, data="lo"))
    assert msg.data == "Hello"
    done = ev("update", 4, msg_serial=1, status="complete", extras={"a": None, "b": 2})
    assert admit(msg, done, max_stream_bytes=100)
    msg = apply_event(msg, done)
    assert (msg.status, msg.extras) == ("complete", {"b": 2})
    with pytest.raises(Conflict):
        admit(msg, ev("update", 5, msg_serial=1, status="failed"), max_stream_bytes=100)
    assert (
        admit(msg, ev("update", 5, msg_serial=1, status="complete"), max_stream_bytes=100) is False
    )
    with pytest.raises(Conflict):
        admit(msg, ev("append", 5, msg_serial=1, data="!"), max_stream_bytes=100)


def test_appends_only_by_the_author_and_within_the_cap() -> None:
    msg = message_from_create(ev("create", 1, data="", streaming=True))
    with pytest.raises(Conflict):
        admit(msg, ev("append", 2, client="bob", msg_serial=1, data="x"), max_stream_bytes=10)
    with pytest.raises(TooLarge):
        admit(msg, ev("append", 2, msg_serial=1, data="x" * 11), max_stream_bytes=10)


def test_delete_cancel_and_reactions() -> None:
    msg = message_from_create(ev("create", 1, data="", streaming=True))
    cancel = ev("cancel", 2, client="bob", msg_serial=1, reason="enough")
    assert admit(msg, cancel, max_stream_bytes=10)
    msg = apply_event(msg, cancel)
    assert msg.cancelled_by == "bob"
    assert admit(msg, cancel, max_stream_bytes=10) is False
    like = ev("annotation", 3, client="bob", msg_serial=1, kind="reaction", name="👍", op="add")
    msg = apply_event(msg, like)
    assert msg.reactions == {"👍": ["bob"]}
    assert admit(msg, like, max_stream_bytes=10) is False
    unlike = ev(
        "annotation", 4, client="bob", msg_serial=1, kind="reaction", name="👍", op="remove"
    )
    assert apply_event(msg, unlike).reactions == {}
    gone = apply_event(msg, ev("delete", 5, msg_serial=1))
    assert gone.deleted and gone.data is None
    assert admit(gone, ev("delete", 6, msg_serial=1), max_stream_bytes=10) is False


def test_an_event_for_no_message_is_not_found() -> None:
    with pytest.raises(NotFound):
        admit(None, ev("update", 2, msg_serial=9, data=1), max_stream_bytes=10)
