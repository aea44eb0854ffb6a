"""The terminal feed's screen updates, read as the terminal receives them."""

from __future__ import annotations

import io
from typing import Any

from roomcast.cli.feed import CLEAR_BELOW, TerminalFeed
from roomcast.protocol.messages import Event


class Writes(io.StringIO):
    """Every write the feed makes, each kept apart (a terminal may show any of them alone)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def event(serial: int, type: Any, **fields: Any) -> Event:
    return Event(channel="room:a", serial=serial, type=type, timestamp=0, **fields)


def test_a_line_printed_above_a_growing_answer_is_one_write_with_the_answer_drawn_again() -> None:
    out = Writes()
    feed = TerminalFeed(out)
    feed.event(event(1, "create", client_id="agent", streaming=True, data=""))
    feed.event(event(2, "append", msg_serial=1, client_id="agent", data="word0 word1"))
    out.writes.clear()
    feed.event(event(3, "create", client_id="alice", data="is it ready?"))
    assert out.writes == [
        "\r" + CLEAR_BELOW + "3 alice is it ready?\n1 agent [streaming] word0 word1"
    ]


def test_a_growing_answer_redrawn_is_one_write_that_clears_then_draws() -> None:
    out = Writes()
    feed = TerminalFeed(out)
    feed.event(event(1, "create", client_id="agent", streaming=True, data=""))
    feed.event(event(2, "create", client_id="bot", streaming=True, data=""))
    out.writes.clear()
    feed.event(event(3, "append", msg_serial=1, client_id="agent", data="hi"))
    up_one = "\x1b[1A"
    assert out.writes == [
        "\r" + up_one + CLEAR_BELOW + "1 agent [streaming] hi\n2 bot [streaming] "
    ]
