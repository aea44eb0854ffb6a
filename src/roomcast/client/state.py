"""Connection states, and the changes :meth:`Client.on <roomcast.client.Client.on>` reports."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger("roomcast.client")

State = Literal["connecting", "connected", "disconnected", "failed", "closed"]
StateEvent = Literal[
    "connected", "disconnected", "resumed", "failed", "closed", "renewed", "renewal_failed"
]
STATE_EVENTS: frozenset[str] = frozenset(
    {"connected", "disconnected", "resumed", "failed", "closed", "renewed", "renewal_failed"}
)


@dataclass(frozen=True, slots=True)
class StateChange:
    """What a :meth:`Client.on` callback receives.

    Attributes:
        event: ``connected`` (a new connection: the first one, or one after the server
            forgot the session), ``resumed`` (reconnected with the same connection id and
            presence), ``disconnected`` (the socket dropped; the client is reconnecting),
            ``failed`` (it stopped reconnecting: see ``error``), ``closed``, ``renewed``
            (a fresh token from ``auth_callback`` replaced the connection's token, without
            reconnecting) or ``renewal_failed`` (``auth_callback`` failed, or the server
            refused its token with 40100: the current token stays until it expires; see
            ``error``).
        state: :attr:`Client.state` after the change.
        connection_id: The connection id, if connected.
        reason: Why the connection ended, for ``disconnected``, ``failed`` and ``closed``;
            why a renewal failed, for ``renewal_failed``.
        error: The error that stopped the client, for ``failed``; the one that stopped a
            renewal, for ``renewal_failed``.
    """

    event: StateEvent
    state: State
    connection_id: str | None
    reason: str | None = None
    error: BaseException | None = None


StateCallback = Callable[[StateChange], object]


class StateListeners:
    """The callbacks given to :meth:`Client.on`, by event.

    A callback may be a plain function or a coroutine function (run as a task). An exception
    in one is logged: a user's bug must not break the connection.
    """

    def __init__(self) -> None:
        self._by_event: dict[str, list[StateCallback]] = {e: [] for e in STATE_EVENTS}
        self._tasks: set[asyncio.Task[Any]] = set()

    def add(self, event: StateEvent, callback: StateCallback) -> None:
        """Call ``callback`` on each ``event`` from now on.

        Raises:
            ValueError: ``event`` is not one of :data:`STATE_EVENTS`.
        """
        if event not in STATE_EVENTS:
            raise ValueError(f"unknown event {event!r}: use one of {sorted(STATE_EVENTS)}")
        self._by_event[event].append(callback)

    def remove(self, event: StateEvent, callback: StateCallback) -> None:
        """Stop calling ``callback`` (nothing happens if it is not there)."""
        with contextlib.suppress(ValueError):
            self._by_event[event].remove(callback)

    def emit(self, change: StateChange) -> None:
        """Call each callback of ``change.event`` with it."""
        for callback in list(self._by_event[change.event]):
            self._run(callback, change)

    def _run(self, callback: StateCallback, change: StateChange) -> None:
        try:
            result = callback(change)
        except Exception:
            log.exception("roomcast client: callback %r failed", callback)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("roomcast client: callback failed", exc_info=task.exception())
