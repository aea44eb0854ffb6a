"""Lines of standard input for an asyncio program, in a reader that stops when told.

Reading stdin with ``loop.run_in_executor(None, sys.stdin.readline)`` leaves a thread blocked
in ``readline`` when the program wants to stop (Ctrl-C), and ``asyncio.run`` waits for the
default executor's threads before it returns: the program stays alive until the next line or
end of input. Here a thread of its own waits with ``select`` for input *or* a wake-up pipe,
so leaving ``async with`` (:meth:`LineReader.close`) ends it at once. It reads the file
descriptor with ``os.read`` (not ``sys.stdin``'s buffer, whose lock a thread must not hold
at interpreter exit).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import select
import threading
from types import TracebackType

CHUNK = 65536
JOIN_TIMEOUT_S = 2.0


class LineReader:
    """The lines (each with its ``\\n``, the last one perhaps without) of file descriptor
    ``fd``, as ``await reader.next_line()``; ``None`` at end of input. Use ``async with``.
    """

    def __init__(self, fd: int, encoding: str = "utf-8") -> None:
        self.fd = fd
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._read, name="stdin-lines", daemon=True)

    async def __aenter__(self) -> LineReader:
        self._thread.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def next_line(self) -> str | None:
        """The next line, or ``None`` at end of input (and after it)."""
        line = await self._lines.get()
        if line is None:
            self._lines.put_nowait(None)  # end of input stays the end
        return line

    def close(self) -> None:
        """Stop reading. The thread ends at once: it only ever waits in ``select``, which
        the wake-up pipe ends, and reads only what is ready."""
        if self._wake_write < 0:
            return
        os.write(self._wake_write, b"x")
        if self._thread.ident is not None:
            self._thread.join(JOIN_TIMEOUT_S)
        if not self._thread.is_alive():
            for fd in (self._wake_read, self._wake_write):
                os.close(fd)
        self._wake_write = -1

    def _read(self) -> None:
        pending = ""
        while True:
            ready, _, _ = select.select([self.fd, self._wake_read], [], [])
            if self._wake_read in ready:
                return
            try:
                chunk = os.read(self.fd, CHUNK)
            except OSError:
                chunk = b""
            pending += self._decoder.decode(chunk, final=not chunk)
            *lines, pending = pending.split("\n")
            for line in lines:
                self._put(line + "\n")
            if not chunk:
                if pending:
                    self._put(pending)
                self._put(None)
                return

    def _put(self, line: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is reading
            self._loop.call_soon_threadsafe(self._lines.put_nowait, line)


__all__ = ["LineReader"]
