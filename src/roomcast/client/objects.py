"""Live objects in the SDK (docs/protocol.md §5): a channel's maps and counters, kept current.

``channel.objects`` holds a copy of the channel's objects: the snapshot of ``attached``,
then every ``object`` event applied in serial order with the same rules the server uses
(:mod:`roomcast.protocol.objects`), so it equals the server's state as of
:attr:`LiveObjects.serial`. Writes go to the server and come back as events: once a write's
``await`` returns, the copy already shows it (the event arrives before its ``ok``).

The poll and board conventions of §5 are in :mod:`roomcast.client.polls` and
:mod:`roomcast.client.boards`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from roomcast.protocol import messages as m
from roomcast.protocol import objects as live
from roomcast.protocol.errors import BadRequest, Forbidden, NotFound

from .session import ChannelHandle, Session

log = logging.getLogger("roomcast.client")

Listener = Callable[[str], object]
"""Called with the id of the object that changed."""


class LiveObjects:
    """The live objects of one channel; get it as ``channel.objects``.

    Attributes:
        serial: The serial the copy is current as of (None before the first snapshot).
    """

    def __init__(self, channel: ChannelHandle, client: Session) -> None:
        self._channel = channel
        self._client = client
        self._state: dict[str, m.ObjectState] | None = None
        self._listeners: dict[str | None, list[Listener]] = {}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.serial: int | None = None

    # ------------------------------------------------------------------ reads

    async def sync(self) -> None:
        """Attach the channel if needed and wait for its objects snapshot.

        Raises:
            Forbidden: The token lacks ``object-subscribe`` on this channel.
        """
        if self._state is None:
            attached = await self._channel.attach()
            if self._state is None:
                self.on_attached(attached)
        if self._state is None:
            raise Forbidden(f"no object-subscribe on {self._channel.name}: objects are not sent")

    async def root(self) -> LiveMap:
        """The channel's root map (attaching first if needed)."""
        await self.sync()
        return LiveMap(self, live.ROOT)

    def get(self, object_id: str) -> LiveMap | LiveCounter:
        """The object ``object_id`` from the copy (call :meth:`sync` or :meth:`root` first).

        Raises:
            NotFound: No such object.
        """
        state = self.state(object_id)
        return LiveMap(self, object_id) if state.type == "map" else LiveCounter(self, object_id)

    def state(self, object_id: str) -> m.ObjectState:
        """The raw state of one object: ``{type: map, entries}`` or ``{type: counter, value}``."""
        if self._state is None:
            raise BadRequest("the objects are not synced yet: await channel.objects.sync()")
        found = self._state.get(object_id)
        if found is None:
            if object_id == live.ROOT:
                return live.empty_root()
            raise NotFound(f"no object {object_id} on {self._channel.name}")
        return found

    def snapshot(self) -> m.ObjectsSnapshot:
        """The whole copy, in the form of ``GET /v1/channels/{channel}/objects``."""
        if self._state is None or self.serial is None:
            raise BadRequest("the objects are not synced yet: await channel.objects.sync()")
        return m.ObjectsSnapshot(serial=self.serial, objects=live.with_root(self._state))

    def resolve(self, value: Any) -> Any:
        """A map value as the SDK hands it out: a reference becomes the object it names."""
        target = live.reference(value)
        if target is None or self._state is None:
            return value
        try:
            return self.get(target)
        except NotFound:
            return value

    def subscribe(self, listener: Listener, object_id: str | None = None) -> Callable[[], None]:
        """Call ``listener(object_id)`` after each change (of ``object_id`` only, if given).

        Returns:
            A function that removes the listener.
        """
        self._listeners.setdefault(object_id, []).append(listener)

        def remove() -> None:
            listeners = self._listeners.get(object_id, [])
            if listener in listeners:
                listeners.remove(listener)

        return remove

    # ------------------------------------------------------------------ writes

    async def apply(self, op: m.ObjectOp) -> m.Ok:
        """Send one operation; returns the ``ok`` (``serial``, and ``object_id`` for a create).

        Raises:
            RoomcastError: The server refused it (``NotFound``, ``Conflict``, ``TooLarge``,
                ``Forbidden``, ``RateLimited``, ...).
        """
        reply = await self._client.call(m.ObjectRequest(channel=self._channel.name, op=op))
        if not isinstance(reply, m.Ok) or not isinstance(reply.serial, int):
            raise BadRequest(f"unexpected reply to an object operation: {reply!r}")
        await self._caught_up(reply.serial)
        return reply

    async def create_map(self, entries: dict[str, Any] | None = None) -> LiveMap:
        """Create a map; values may be :class:`LiveMap`/:class:`LiveCounter` (references)."""
        ok = await self.apply(m.MapCreate(entries=_wire_entries(entries or {})))
        return LiveMap(self, _created(ok))

    async def create_counter(self, value: int | float = 0) -> LiveCounter:
        ok = await self.apply(m.CounterCreate(value=value))
        return LiveCounter(self, _created(ok))

    # ------------------------------------------------------------------ from the channel

    def on_attached(self, reply: m.Attached) -> None:
        """A (re)attach. A fresh snapshot replaces the copy; on a resumed attach the copy
        stays and the replayed events bring it up to date."""
        if isinstance(reply.objects, m.ObjectsSnapshot) and (
            not reply.resumed or self._state is None
        ):
            self._state = dict(reply.objects.objects)
            self.serial = reply.objects.serial
            self._wake()
            self._notify(None)

    def on_event(self, event: m.Event) -> None:
        if self._state is None:
            return
        self.serial = event.serial
        if self._waiters:
            self._wake()
        if event.type != "object":
            return
        try:
            object_id = live.apply_event(self._state, event)
        except Exception:  # a server event always applies; a failure means a lost copy
            log.exception("could not apply %s on %s; resyncing", event, self._channel.name)
            self._state = None
            return
        self._notify(object_id)

    def _notify(self, object_id: str | None) -> None:
        targets = [*self._listeners.get(None, ())]
        if object_id is not None:
            targets += self._listeners.get(object_id, ())
        for listener in targets:
            try:
                listener(object_id or live.ROOT)
            except Exception:
                log.exception("an objects listener failed")

    async def _caught_up(self, serial: int) -> None:
        """Wait until the copy includes ``serial``. On an attached channel the event comes
        before its ``ok``, so this returns at once; during a (re)attach it waits for the
        replay (at most 10 s)."""
        if self._state is None or (self.serial is not None and self.serial >= serial):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((serial, waiter))
        try:
            await asyncio.wait_for(asyncio.shield(waiter), 10)
        except TimeoutError:
            log.warning("objects of %s did not reach serial %d", self._channel.name, serial)
        finally:
            if (serial, waiter) in self._waiters:
                self._waiters.remove((serial, waiter))

    def _wake(self) -> None:
        reached = self.serial or 0
        for serial, waiter in list(self._waiters):
            if serial <= reached and not waiter.done():
                waiter.set_result(None)


class LiveMap:
    """A map of the channel's live objects: string keys → JSON values or references."""

    def __init__(self, objects: LiveObjects, object_id: str) -> None:
        self.objects = objects
        self.object_id = object_id

    def __repr__(self) -> str:
        return f"<LiveMap {self.object_id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LiveMap) and other.object_id == self.object_id

    def __hash__(self) -> int:
        return hash(("map", self.object_id))

    def entries(self) -> dict[str, Any]:
        """The raw entries (a reference stays ``{"object_id": id}``)."""
        entries = self.objects.state(self.object_id).entries
        return dict(entries) if isinstance(entries, dict) else {}

    def get(self, key: str, default: Any = None) -> Any:
        """The value at ``key``; a reference comes back as its :class:`LiveMap` or
        :class:`LiveCounter`."""
        entries = self.entries()
        return self.objects.resolve(entries[key]) if key in entries else default

    def keys(self) -> list[str]:
        return list(self.entries())

    def __contains__(self, key: object) -> bool:
        return key in self.entries()

    async def set(self, key: str, value: Any) -> int:
        """Set ``key``; returns the operation's serial."""
        ok = await self.objects.apply(
            m.MapSet(object_id=self.object_id, key=key, value=_wire(value))
        )
        return _serial(ok)

    async def remove(self, key: str) -> int:
        ok = await self.objects.apply(m.MapRemove(object_id=self.object_id, key=key))
        return _serial(ok)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(object_id)`` after each change of this map."""
        return self.objects.subscribe(listener, self.object_id)


class LiveCounter:
    """A counter of the channel's live objects."""

    def __init__(self, objects: LiveObjects, object_id: str) -> None:
        self.objects = objects
        self.object_id = object_id

    def __repr__(self) -> str:
        return f"<LiveCounter {self.object_id}={self.value}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LiveCounter) and other.object_id == self.object_id

    def __hash__(self) -> int:
        return hash(("counter", self.object_id))

    @property
    def value(self) -> int | float:
        value = self.objects.state(self.object_id).value
        return value if isinstance(value, int | float) else 0

    async def increment(self, amount: int | float = 1) -> int:
        """Add ``amount`` (negative to decrement); returns the operation's serial."""
        ok = await self.objects.apply(m.CounterInc(object_id=self.object_id, amount=amount))
        return _serial(ok)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self.objects.subscribe(listener, self.object_id)


def _wire(value: Any) -> Any:
    if isinstance(value, LiveMap | LiveCounter):
        return {"object_id": value.object_id}
    return value


def _wire_entries(entries: dict[str, Any]) -> dict[str, Any]:
    return {key: _wire(value) for key, value in entries.items()}


def _serial(ok: m.Ok) -> int:
    assert isinstance(ok.serial, int)
    return ok.serial


def _created(ok: m.Ok) -> str:
    if not isinstance(ok.object_id, str):
        raise BadRequest(f"the server sent no object_id for a create: {ok!r}")
    return ok.object_id


__all__ = ["LiveCounter", "LiveMap", "LiveObjects"]
