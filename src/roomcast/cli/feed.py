"""How ``roomcast sub`` shows what it receives: one line per event for scripts (pipes and
``--json``), or, in a terminal, streamed messages as lines that grow in place.

In a terminal a streamed answer is one line at the bottom of the screen, rewritten as its
fragments arrive (``\\r``, cursor up, clear to the end of the screen), cut to the terminal's
width so it never wraps; several streams at once are several such lines. When a stream
ends, its line is replaced by the whole message (text as it is, continuation lines indented)
with how it ended: ``[complete]``, ``[cancelled by bob]``, ``[failed: abandoned]``. Any other
event or note is printed above the growing lines, which are drawn again below it, so nothing
is written over.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import msgspec
from rich.cells import cell_len

from roomcast.cli.output import (
    event_line,
    json_line,
    message_block,
    message_line,
    status_label,
    text_block,
    visible,
)
from roomcast.cli.root import note

FINAL = ("complete", "cancelled", "failed")
CLEAR_BELOW = "\x1b[J"  # erase from the cursor to the end of the screen


class Feed(Protocol):
    """Where ``sub`` sends what it receives."""

    def message(self, message: Any) -> None:
        """A message from the attach's ``rewind``."""

    def event(self, event: Any) -> None:
        """An event as it happens."""

    def note(self, text: str) -> None:
        """A status line for people (stderr)."""

    def close(self) -> None:
        """The end: leave the screen tidy."""


class LineFeed:
    """One line per event and per message, as it comes: ``serial client_id data`` (see
    :func:`~roomcast.cli.output.event_line`), or JSON with ``as_json``."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def message(self, message: Any) -> None:
        print(json_line(message) if self.as_json else message_line(message), flush=True)

    def event(self, event: Any) -> None:
        print(json_line(event) if self.as_json else event_line(event), flush=True)

    def note(self, text: str) -> None:
        note(text)

    def close(self) -> None:
        pass


@dataclass
class LiveMessage:
    """A message that is still streaming, as far as this terminal has seen it."""

    msg_serial: int
    client_id: str | None
    data: Any = ""
    status: str = "streaming"
    cancelled_by: str | None = None
    extras: Any = None
    partial: bool = False  # its start came before we attached

    @property
    def head(self) -> str:
        who = self.client_id if self.client_id is not None else "-"
        return f"{self.msg_serial} {who} [{status_label(self)}] " + ("…" if self.partial else "")


class TerminalFeed:
    """Streams as lines that grow and settle, for a terminal; see the module docstring."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.live: dict[int, LiveMessage] = {}
        self._drawn = 0  # lines of the live area now on screen; the cursor is on the last

    def message(self, message: Any) -> None:
        if message.status == "streaming" and not message.deleted:
            self.live[message.msg_serial] = LiveMessage(
                message.msg_serial,
                message.client_id,
                message.data,
                cancelled_by=message.cancelled_by,
                extras=message.extras,
            )
            self._redraw()
        else:
            self._print(message_block(message))

    def event(self, event: Any) -> None:
        live = self.live.get(event.msg_serial) if isinstance(event.msg_serial, int) else None
        if event.type == "create" and event.streaming is True:
            self.live[event.serial] = LiveMessage(event.serial, event.client_id, event.data)
            self._redraw()
        elif event.type == "create":
            who = event.client_id if event.client_id is not None else "-"
            self._print(text_block(f"{event.serial} {who} ", event.data))
        elif event.type == "append":
            if live is None:  # it began before we attached
                live = LiveMessage(event.msg_serial, event.client_id, "", partial=True)
                self.live[event.msg_serial] = live
            live.data = (live.data if isinstance(live.data, str) else "") + event.data
            self._redraw()
        elif live is not None and event.type in ("update", "cancel"):
            self._change(live, event)
        else:
            if live is not None and event.type == "delete":
                del self.live[event.msg_serial]
            self._print(event_line(event))

    def _change(self, live: LiveMessage, event: Any) -> None:
        if event.type == "cancel":
            live.cancelled_by = event.client_id
        if isinstance(event.extras, dict):
            live.extras = {**(live.extras or {}), **event.extras}
        if event.data is not msgspec.UNSET:
            live.data = event.data
        if event.type == "update" and event.status in FINAL:
            live.status = event.status
            del self.live[live.msg_serial]
            self._print(text_block(live.head, live.data))
        else:
            self._redraw()

    def note(self, text: str) -> None:
        self._write(self._clear())
        note(text)
        self._write(self._draw())

    def close(self) -> None:
        if self._drawn:
            self._write("\n")
            self._drawn = 0

    # ------------------------------------------------------------------ the screen
    # Each change of the screen is one write, so that a terminal never shows it half done
    # (a line printed above the live area without the live area below it yet).

    def _print(self, text: str) -> None:
        """``text`` above the live area, which is drawn again below it."""
        self._write(self._clear() + text + "\n" + self._draw())

    def _redraw(self) -> None:
        self._write(self._clear() + self._draw())

    def _clear(self) -> str:
        """What takes the live area off the screen, leaving the cursor where it began."""
        if not self._drawn:
            return ""
        up = f"\x1b[{self._drawn - 1}A" if self._drawn > 1 else ""
        self._drawn = 0
        return "\r" + up + CLEAR_BELOW

    def _draw(self) -> str:
        """What draws the live area, the cursor left on its last line."""
        width, height = self._size()
        shown = list(self.live.values())[-max(1, height - 2) :]  # the newest, if too many
        lines = [_cut(live.head, live.data, width - 1) for live in shown]
        self._drawn = len(lines)
        return "\n".join(lines)

    def _size(self) -> tuple[int, int]:
        try:
            size = os.get_terminal_size(self.out.fileno())
        except (OSError, ValueError):
            size = shutil.get_terminal_size()
        return max(size.columns, 20), max(size.lines, 3)

    def _write(self, text: str) -> None:
        if not text:
            return
        self.out.write(text)
        self.out.flush()


def _cut(head: str, data: Any, width: int) -> str:
    """``head`` and the end of ``data`` on one line, at most ``width`` cells."""
    text = visible(data.replace("\n", " ")) if isinstance(data, str) else json_line(data)
    room = width - cell_len(head)
    if room <= 1:
        return _fit(head, width)
    if cell_len(text) <= room:
        return head + text
    tail = text[-room:]
    while cell_len(tail) > room - 1:
        tail = tail[1:]
    return head + "…" + tail


def _fit(text: str, width: int) -> str:
    while cell_len(text) > width:
        text = text[:-1]
    return text


def make_feed(as_json: bool) -> Feed:
    """The terminal feed when stdout is a terminal that understands cursor movement and
    ``--json`` is not given; else one line per event."""
    terminal = sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
    return TerminalFeed() if terminal and not as_json else LineFeed(as_json)


__all__ = ["Feed", "LineFeed", "LiveMessage", "TerminalFeed", "make_feed"]
