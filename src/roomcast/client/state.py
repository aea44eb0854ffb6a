"""Connection states, and the changes :meth:`Client.on <roomcast.client.Client.on>` reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

State = Literal["connecting", "connected", "disconnected", "failed", "closed"]
StateEvent = Literal["connected", "disconnected", "resumed", "failed", "closed"]
STATE_EVENTS: frozenset[str] = frozenset(
    {"connected", "disconnected", "resumed", "failed", "closed"}
)


@dataclass(frozen=True, slots=True)
class StateChange:
    """What a :meth:`Client.on` callback receives.

    Attributes:
        event: ``connected`` (a new connection: the first one, or one after the server
            forgot the session), ``resumed`` (reconnected with the same connection id and
            presence), ``disconnected`` (the socket dropped; the client is reconnecting),
            ``failed`` (it stopped reconnecting: see ``error``) or ``closed``.
        state: :attr:`Client.state` after the change.
        connection_id: The connection id, if connected.
        reason: Why the connection ended, for ``disconnected``, ``failed`` and ``closed``.
        error: The error that stopped the client, for ``failed``.
    """

    event: StateEvent
    state: State
    connection_id: str | None
    reason: str | None = None
    error: BaseException | None = None


StateCallback = Callable[[StateChange], object]
