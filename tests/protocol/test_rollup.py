"""§2/§3: how events roll up into a message, and which ones are refused or no-ops."""

from __future__ import annotations

import pytest

from roomcast.protocol.errors import Conflict, NotFound, TooLarge
from roomcast.protocol.messages import Event
from roomcast.protocol.rollup import (
    admit,
    apply_event,
    check_size,
    message_from_create,
    message_size,
)


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


def test_a_deleted_message_takes_no_change_but_a_repeated_delete() -> None:
    msg = message_from_create(ev("create", 1, data="Hel", streaming=True))
    gone = apply_event(msg, ev("delete", 2, msg_serial=1))
    like = ev("annotation", 3, client="bob", msg_serial=1, kind="reaction", name="a", op="add")
    for change in (
        ev("update", 3, msg_serial=1, extras={"a": 1}),
        ev("append", 3, msg_serial=1, data="lo"),
        ev("cancel", 3, client="bob", msg_serial=1),
        like,
    ):
        with pytest.raises(Conflict, match="message 1 is deleted"):
            admit(gone, change, max_stream_bytes=100)
    assert admit(gone, ev("delete", 3, msg_serial=1), max_stream_bytes=100) is False


def test_an_append_needs_text_data() -> None:
    msg = message_from_create(ev("create", 1, data="Hel", streaming=True))
    msg = apply_event(msg, ev("update", 2, msg_serial=1, data=["Hel"]))
    with pytest.raises(Conflict, match="message 1's data is not text: it cannot be appended to"):
        admit(msg, ev("append", 3, msg_serial=1, data="lo"), max_stream_bytes=100)
    msg = apply_event(msg, ev("update", 3, msg_serial=1, data=None))
    assert admit(msg, ev("append", 4, msg_serial=1, data="lo"), max_stream_bytes=100)


def test_the_size_rule_counts_the_message_after_the_change() -> None:
    msg = message_from_create(ev("create", 1, data="x" * 500, extras={"a": "y" * 50}))
    assert message_size(msg) == len('{"a":""}') + 50  # text data is bounded elsewhere
    grown = apply_event(msg, ev("update", 2, msg_serial=1, extras={"b": "z" * 60}))
    with pytest.raises(TooLarge, match="message 1 would take 125 bytes"):
        check_size(msg, grown, max_message_bytes=100)
    check_size(msg, grown, max_message_bytes=125)
    like = ev("annotation", 2, client="bob", msg_serial=1, kind="reaction", name="r" * 60, op="add")
    with pytest.raises(TooLarge):
        check_size(msg, apply_event(msg, like), max_message_bytes=100)
    # Over the limit already (a lower limit since): a change that does not grow it goes.
    smaller = apply_event(grown, ev("update", 3, msg_serial=1, extras={"b": "z"}))
    check_size(grown, smaller, max_message_bytes=10)
