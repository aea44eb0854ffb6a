"""Connection states, and the changes :meth:`Client.on <roomcast.client.Client.on>` reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

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
