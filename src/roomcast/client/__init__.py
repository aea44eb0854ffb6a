"""The async Python SDK: people, agents and tools talk to a roomcast server with it.

Example::

    import asyncio
    import roomcast.client

    async def main() -> None:
        async with roomcast.client.connect("http://127.0.0.1:8000", client_id="alice") as client:
            lunch = client.channels.get("room:lunch")
            await lunch.publish("tacos?")
            async for event in lunch.subscribe():
                print(event.serial, event.client_id, event.data)

    asyncio.run(main())

The SDK speaks the wire protocol (docs/protocol.md) with the types of
:mod:`roomcast.protocol.messages` (``Event``, ``Message``, ``PresenceMember``, ``Attached``
are those types). It reconnects with backoff, resumes, re-attaches every channel from the
last serial it delivered and re-sends unanswered publishes (each carries an idempotency
``id``), so subscribers see every event exactly once.
See ``docs/sdk.md``.
"""

from roomcast.protocol.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    RoomcastError,
    StreamCancelled,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from roomcast.protocol.http import ChannelSummary
from roomcast.protocol.messages import Attached, Event, Message, PresenceMember

from .backoff import Backoff
from .boards import Board, BoardItem, Boards
from .channel import Channel, Channels, HistoryPage
from .client import Client, connect
from .errors import AuthError, Cancelled, ClientClosed, Discontinuity, Overloaded
from .objects import LiveCounter, LiveMap, LiveObjects
from .polls import Poll, Polls
from .presence import Presence
from .rest import list_channels
from .state import State, StateChange, StateEvent
from .stream import MessageStream
from .subscription import Subscription

__all__ = [
    "Attached",
    "AuthError",
    "Backoff",
    "BadRequest",
    "Board",
    "BoardItem",
    "Boards",
    "Cancelled",
    "Channel",
    "ChannelSummary",
    "Channels",
    "Client",
    "ClientClosed",
    "Conflict",
    "Discontinuity",
    "Event",
    "Forbidden",
    "HistoryPage",
    "LiveCounter",
    "LiveMap",
    "LiveObjects",
    "Message",
    "MessageStream",
    "NotFound",
    "Overloaded",
    "Poll",
    "Polls",
    "Presence",
    "PresenceMember",
    "RateLimited",
    "RoomcastError",
    "State",
    "StateChange",
    "StateEvent",
    "StreamCancelled",
    "Subscription",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "connect",
    "list_channels",
]
