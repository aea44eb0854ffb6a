"""The latest messages of one room, kept from the events the agent receives anyway.

An answer's context is the room's latest messages (:mod:`.context`). Reading them from
history at every mention costs the store a query of up to 200 messages, and both sides
their encoding, on the way to the first token. An agent already receives every event of
the rooms it is attached to, so it keeps them instead (docs/agents.md "Context"):

- its attach asks for the latest messages (``rewind``): a snapshot as of the attach's
  serial, with every event after that serial still to come;
- each later event is applied to them as every store applies it
  (:func:`~roomcast.protocol.rollup.apply_event`);
- an agent leaves ``append`` out of its events, so a streamed message's text is read once,
  when the ``update`` that ends it comes (off the path of the next answer);
- only the newest messages are kept: at most :data:`KEPT_MESSAGES`, and no more than
  twice what a context reads;
- a gap in the events (a ``Discontinuity``) drops them, and the room is attached once
  more with a ``rewind`` to keep them again from that snapshot; until it is in, answers
  wait for it, and read history if it does not come.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from msgspec import UNSET, structs

from roomcast.client import MessageStream
from roomcast.protocol.messages import FINAL_STATUSES, Attached, Event, Message
from roomcast.protocol.rollup import apply_event, message_from_create

from .context import CONTEXT_TOKENS, estimate_tokens, visible
from .triggers import message_text

KEPT_MESSAGES = 200  # as many as a history read for the context returns
KEPT_TOKENS = 2 * CONTEXT_TOKENS  # a context reads up to CONTEXT_TOKENS before its trigger

log = logging.getLogger("roomcast.agents")

ReadMessage = Callable[[int], Awaitable[Message | None]]


class RecentMessages:
    """The latest messages of one room, kept current from its events.

    Call :meth:`expect` before the attach that asks for a ``rewind``, :meth:`prime` with
    its reply, and :meth:`apply` with every event; :meth:`latest` gives them.
    """

    def __init__(self, read: ReadMessage) -> None:
        self._read = read
        self._messages: dict[int, Message] = {}  # by msg_serial, in serial order
        self._costs: dict[int, int] = {}  # each one's tokens in a context (0: not in one)
        self._tokens = 0  # their sum
        self._texts: dict[int, asyncio.Task[None]] = {}  # finished streams being read
        self._own: dict[int, MessageStream] = {}  # the agent's own answers: text known
        self._early: list[Event] | None = None  # events before the attach's reply is in
        self._primed = asyncio.Event()  # set but while an attach is on its way
        self._primed.set()
        self._cut = False  # whether a message that a history read returns was dropped
        self._snapshot: int | None = None  # the serial of the attach it started from
        self.serial: int | None = None  # every event up to it is applied; None: none kept

    @property
    def kept(self) -> int:
        """How many messages are kept."""
        return len(self._messages)

    def own(self, stream: MessageStream) -> None:
        """``stream`` is the agent's answer: its text is known here, not read back."""
        if stream.msg_serial is not None and (self.serial is not None or self.expecting):
            self._own[stream.msg_serial] = stream

    @property
    def expecting(self) -> bool:
        """Whether an attach with a ``rewind`` is on its way."""
        return not self._primed.is_set()

    def expect(self) -> None:
        """An attach with a ``rewind`` is on its way: hold the events until it is in."""
        self.reset()
        self._early = []
        self._primed.clear()

    def prime(self, attached: Attached) -> None:
        """Start from the ``rewind`` of ``attached``, then apply the events held."""
        early, self._early = self._early or [], None
        self._primed.set()
        if attached.messages is UNSET:
            return
        for message in attached.messages:
            self._put(message)
        self.serial = self._snapshot = attached.serial
        self._trim()
        for event in early:
            self.apply(event)

    def gap(self, serial: int) -> None:
        """The events before the snapshot at ``serial`` could not all be replayed. Nothing
        is lost when what is kept starts from that very snapshot (an attach whose replay
        failed); otherwise keep nothing."""
        if self.expecting:
            self._early = []  # events before the snapshot: the attach's reply is what counts
        elif self.serial is None or self.serial != serial or self._snapshot != serial:
            self.reset()

    def reset(self) -> None:
        """Keep nothing (a gap in the events): answers read history instead."""
        for task in self._texts.values():
            task.cancel()
        self._messages, self._costs, self._texts, self._own = {}, {}, {}, {}
        self._tokens, self._early, self._cut, self.serial = 0, None, False, None
        self._snapshot = None
        self._primed.set()

    def apply(self, event: Event) -> None:
        """Apply one event of the room (those up to :attr:`serial` are in already)."""
        if self._early is not None:
            self._early.append(event)
            return
        if self.serial is None or event.serial <= self.serial:
            return
        self.serial = event.serial
        if event.type == "create":
            self._put(message_from_create(event))
            self._trim()
            return
        serial = event.msg_serial
        before = self._messages.get(serial) if isinstance(serial, int) else None
        if before is None:
            return
        serial = before.msg_serial
        after = apply_event(before, event)
        if event.type == "delete" or (event.type == "update" and event.data is not UNSET):
            self._forget_text(serial)  # its text is the event's
            self._own.pop(serial, None)
        elif before.status not in FINAL_STATUSES and after.status in FINAL_STATUSES:
            stream = self._own.pop(serial, None)
            text = stream.stored_text() if stream is not None else None
            if text is not None:
                after = structs.replace(after, data=text)
            elif visible(after):
                self._texts[serial] = asyncio.ensure_future(self._read_text(serial))
        self._put(after)

    async def latest(self, before: int) -> list[Message] | None:
        """The messages kept, oldest first, every text in, for a context that ends at
        message ``before``. None when none are kept, a text cannot be read, or too few
        before it are kept (a room moved on since): read history instead."""
        await self._primed.wait()
        retried: set[int] = set()
        while self.serial is not None:
            if self._cut and self._tokens_before(before) < CONTEXT_TOKENS:
                return None
            # Only the texts before ``before`` are in its context.
            needed = {serial: task for serial, task in self._texts.items() if serial < before}
            if not needed:
                return list(self._messages.values())
            for serial, task in needed.items():
                if task.done():  # its read failed: try once more, then read history
                    if serial in retried:
                        return None
                    retried.add(serial)
                    needed[serial] = self._texts[serial] = asyncio.ensure_future(
                        self._read_text(serial)
                    )
            await asyncio.wait(needed.values())  # not cancelled with the caller
        return None

    async def finished(self, serial: int) -> Message | None:
        """Message ``serial`` with its whole text, once the stream that ended it is read;
        None when it is not kept or its text could not be read."""
        task = self._texts.get(serial)
        if task is not None:
            await asyncio.wait([task])
        if serial in self._texts:
            return None
        return self._messages.get(serial)

    async def _read_text(self, serial: int) -> None:
        try:
            found = await self._read(serial)
        except Exception as exc:  # the store is away: latest() tries again
            log.debug("cannot read message %d for an agent's context: %s", serial, exc)
            return
        if self._texts.get(serial) is not asyncio.current_task():
            return  # the text came with an event meanwhile, or all was dropped
        del self._texts[serial]
        kept = self._messages.get(serial)
        if found is not None and kept is not None:
            self._put(structs.replace(kept, data=found.data))
            self._trim()

    def _tokens_before(self, serial: int) -> int:
        return sum(cost for kept, cost in self._costs.items() if kept < serial)

    def _put(self, message: Message) -> None:
        serial = message.msg_serial
        unknown = serial in self._texts
        cost = 0 if unknown or not visible(message) else estimate_tokens(message_text(message)) + 2
        self._tokens += cost - self._costs.get(serial, 0)
        self._costs[serial] = cost
        self._messages[serial] = message

    def _forget_text(self, serial: int) -> None:
        task = self._texts.pop(serial, None)
        if task is not None:
            task.cancel()

    def _trim(self) -> None:
        """Drop the oldest messages past :data:`KEPT_MESSAGES`, or once those after them
        hold :data:`KEPT_TOKENS` (a text still being read counts as none)."""
        while len(self._messages) > 1:
            oldest = next(iter(self._messages))
            newer = self._tokens - self._costs[oldest]
            if len(self._messages) <= KEPT_MESSAGES:
                if newer < KEPT_TOKENS:
                    return
                self._cut = True  # a history read would have had this one
            del self._messages[oldest]
            self._tokens = newer
            del self._costs[oldest]
            self._forget_text(oldest)
            self._own.pop(oldest, None)


__all__ = ["KEPT_MESSAGES", "KEPT_TOKENS", "RecentMessages"]
