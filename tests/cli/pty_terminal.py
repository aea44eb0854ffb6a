"""A command run in a pseudo-terminal, as a person runs it, and the screen it draws.

The pty is the command's controlling terminal (a new session, ``TIOCSCTTY``), so the line
discipline works as in a real one: ``\\x03`` (Ctrl-C) sends SIGINT to the command, ``\\x04``
(Ctrl-D) ends its input. :class:`Screen` is a small terminal emulator that understands what
the CLI writes (text, ``\\r``, ``\\n``, cursor up, erase, colours) and fails on anything
else, so a test reads the screen a person would see, not the bytes.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable

CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


class Screen:
    """Rows of text and a cursor: what a terminal of ``columns`` shows after some output.
    Rows are kept without limit (no scrolling away), so the whole session stays readable.
    """

    def __init__(self, columns: int) -> None:
        self.columns = columns
        self.rows: list[list[str]] = [[]]
        self.row = self.col = 0

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            if match := CSI.match(text, i):
                self._control(match.group(1), match.group(2))
                i = match.end()
                continue
            char = text[i]
            i += 1
            if char == "\r":
                self.col = 0
            elif char == "\n":
                self.row += 1
                self.col = 0  # the pty turns \n into \r\n (onlcr)
            elif char == "\x07":
                pass
            elif char.isprintable():
                self._put(char)
            else:
                raise AssertionError(f"unexpected control character {char!r} in {text!r}")

    def _put(self, char: str) -> None:
        if self.col >= self.columns:  # a terminal wraps when the next character comes
            self.row += 1
            self.col = 0
        line = self._line()
        line.extend(" " * (self.col + 1 - len(line)))
        line[self.col] = char
        self.col += 1

    def _line(self) -> list[str]:
        while len(self.rows) <= self.row:
            self.rows.append([])
        return self.rows[self.row]

    def _control(self, params: str, final: str) -> None:
        if final == "A":
            self.row = max(0, self.row - int(params or 1))
        elif final == "J" and params in ("", "0"):
            del self._line()[self.col :]
            del self.rows[self.row + 1 :]
        elif final == "K" and params in ("", "0"):
            del self._line()[self.col :]
        elif final == "m" or (final in "hl" and params.startswith("?")):
            pass  # colours, cursor shown or hidden
        else:
            raise AssertionError(f"unexpected escape sequence ESC[{params}{final}")

    def lines(self) -> list[str]:
        """The rows as text, trailing spaces and empty trailing rows dropped."""
        text = ["".join(row).rstrip() for row in self.rows]
        while text and not text[-1]:
            text.pop()
        return text


class PtyCommand:
    """``python -m roomcast ARGS`` with a pty of ``columns`` x ``rows`` as its terminal."""

    def __init__(
        self, *args: str, columns: int = 100, rows: int = 30, env: dict[str, str] | None = None
    ) -> None:
        self.columns = columns
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        environment = {**os.environ, "TERM": "xterm", **(env or {})}
        environment.pop("COLUMNS", None)
        environment.pop("LINES", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roomcast", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=environment,
            start_new_session=True,
            preexec_fn=_take_terminal,  # the pty becomes its controlling terminal
        )
        os.close(slave)
        self.master = master
        self._output = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def __enter__(self) -> PtyCommand:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        os.close(self.master)

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the command ended and closed the terminal
                return
            if not chunk:
                return
            with self._lock:
                self._output += chunk

    def send(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def output(self) -> str:
        with self._lock:
            return self._output.decode(errors="replace")

    def screen(self) -> list[str]:
        screen = Screen(self.columns)
        screen.feed(self.output())
        return screen.lines()

    def wait_for(self, what: Callable[[list[str]], bool], timeout: float = 20.0) -> list[str]:
        """Until the screen shows ``what``; returns the screen."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.screen()
            if what(lines):
                return lines
            if time.monotonic() > deadline:
                raise AssertionError("the screen never showed it:\n" + "\n".join(lines))
            time.sleep(0.05)

    def exit_code(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)


def _take_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
