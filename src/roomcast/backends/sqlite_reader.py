"""The SQLite store's reader: one thread with its own connection, fed reads in batches.

A read handed to a thread pool one at a time wakes the pool's idle thread each time, and
each wake takes the event loop thread's core for a moment (the woken thread wants the
interpreter lock the loop holds). When thousands of clients re-attach at once after a
restart, that is a wake per client. Here the reads asked for in one turn of the event loop
go over together, the thread runs them in order, and their results come back to the loop
in one call.

One thread: more read no faster (SQLite's C code runs without the interpreter lock, but the
rows become Python objects with it), and each takes the lock from the event loop's thread
at every step: 19,000 clients attaching at once after a restart caught up in 17.0 s with
four readers, 15.4 s with two, 14.7 s with one (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from roomcast.protocol.errors import Unavailable

from .sqlite_file import connect

T = TypeVar("T")

_Read = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]
_Done = tuple["asyncio.Future[Any]", Any, BaseException | None]


class SqliteReader:
    """Runs ``fn(connection)`` on the reader thread: ``await reader.read(fn)``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[list[_Read] | None] = queue.SimpleQueue()
        self._pending: list[_Read] = []
        self._pending_lock = threading.Lock()  # reads may come from more than one event loop
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._serve, name="roomcast-sqlite-reader", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        """Run the reads already asked for, then end the thread and close its connection."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._hand_over()
        self._queue.put(None)
        await asyncio.to_thread(thread.join)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        thread = self._thread
        if thread is None or not thread.is_alive():
            raise Unavailable(f"the store {self.path} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._pending_lock:
            self._pending.append((fn, future))
            first = len(self._pending) == 1
        if first:  # the first of this turn: the batch goes at its end
            loop.call_soon(self._hand_over)
        return await future

    def _hand_over(self) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending, []
        if batch:
            self._queue.put(batch)

    def _serve(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while (batch := self._queue.get()) is not None:
                done: dict[asyncio.AbstractEventLoop, list[_Done]] = {}
                for fn, future in batch:
                    try:
                        if conn is None:  # opened at the first read (again if it failed)
                            conn = connect(self.path)
                            conn.execute("PRAGMA query_only = ON")
                        result: _Done = (future, fn(conn), None)
                    except BaseException as exc:  # the caller's, as the read's result
                        result = (future, None, exc)
                    done.setdefault(future.get_loop(), []).append(result)
                for loop, results in done.items():  # each future on its own loop
                    try:
                        loop.call_soon_threadsafe(_settle, results)
                    except RuntimeError:  # that loop has closed: nobody waits for these
                        pass
        finally:
            if conn is not None:
                conn.close()


def _settle(done: list[_Done]) -> None:
    for future, result, exc in done:
        if future.done():  # its caller was cancelled
            continue
        if exc is None:
            future.set_result(result)
        elif isinstance(exc, StopIteration):  # a future cannot hold one
            future.set_exception(RuntimeError(f"the read raised {exc!r}"))
        else:
            future.set_exception(exc)
