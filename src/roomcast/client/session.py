"""The seams between the SDK's parts, so that its modules import one way only.

A channel and the parts it holds (presence, live objects, polls, boards) reach the client
through :class:`Session`; presence, live objects and subscriptions reach their channel
through :class:`ChannelHandle`. So ``client.py`` imports ``channel.py``, which imports its
parts, and none of them imports back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from roomcast.protocol import messages as m

ChannelState = Literal["initialized", "attaching", "attached", "detached", "failed"]


class Session(Protocol):
    """What a channel and its parts need from the client (a
    :class:`~roomcast.client.Client` is one)."""

    @property
    def client_id(self) -> str | None:
        """Who this client is (known once connected)."""
        ...

    @property
    def connection_id(self) -> str | None:
        """The server's id for this connection (known once connected)."""
        ...

    @property
    def rollup_s(self) -> float:
        """The server's rollup window in seconds (``connected.limits.rollup_ms``; 0 before
        the first ``connected`` or from a server that gives none)."""
        ...

    @property
    def is_connected(self) -> bool:
        """True while a socket is up (requests go out at once)."""
        ...

    def check_open(self) -> None:
        """Raise if the client can no longer send (closed, or failed for good)."""
        ...

    async def call(self, request: m.Request) -> m.ServerMessage:
        """Send ``request`` and return its reply; an ``error`` reply raises its error."""
        ...

    def submit(
        self,
        request: m.Request,
        on_reply: Callable[[m.ServerMessage], None],
        on_fail: Callable[[BaseException], None],
        *,
        resend: bool = True,
    ) -> int:
        """Send ``request`` without waiting and route its reply; returns its ``ref``."""
        ...


class ChannelHandle(Protocol):
    """What presence, live objects and subscriptions need from their channel (a
    :class:`~roomcast.client.Channel` is one)."""

    @property
    def name(self) -> str:
        """The channel's name."""
        ...

    @property
    def state(self) -> ChannelState:
        """``initialized``, ``attaching``, ``attached``, ``detached`` or ``failed``."""
        ...

    async def attach(self) -> m.Attached:
        """Attach if not attached; the ``attached`` reply."""
        ...


__all__ = ["ChannelHandle", "ChannelState", "Session"]
