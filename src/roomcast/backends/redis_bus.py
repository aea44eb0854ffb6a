"""The Bus of the ``redis://`` backend: Redis sharded pub/sub, one pub/sub channel per
roomcast channel (``<prefix>:{<channel>}:bus``, in the channel's hash slot).

Every commit script publishes the events it stored there (``SPUBLISH``, after the write, in
the same script). A node subscribes to a channel while it has subscribers for it and delivers
the events to its sink in serial order, each once: it remembers the last serial it delivered
per channel, drops what it already delivered, holds events that arrive after a gap and fills
the gap from the log. Its own commits are delivered at once (before the append returns), the
echo from Redis is then dropped as already delivered.

Presence and signals go through the same pub/sub channel, tagged with the sending node, which
delivers them to itself directly and ignores its own echo.

On a Redis Cluster the pub/sub channel is on the master that holds the channel's slot: the
node's pub/sub holds a connection to each master it subscribes on, each read by a task of its
own. It follows the cluster: a master that gives a slot away unsubscribes the node, and a
master's connection that fails makes it ask the cluster for its layout again; either way
redis-py moves the subscriptions to the new owner and the channels catch up from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from roomcast.aio import cancel_and_wait
from roomcast.protocol.errors import Unavailable
from roomcast.protocol.messages import Event, PresenceEvent, SignalEvent

from .base import Bus

log = logging.getLogger(__name__)

_events = msgspec.json.Decoder(list[Event]).decode
_presence = msgspec.json.Decoder(PresenceEvent).decode
_signal = msgspec.json.Decoder(SignalEvent).decode
_encode = msgspec.json.Encoder().encode

_SUBSCRIBE_TIMEOUT_S = 10.0
_FILL_RETRY_S = 0.2
_SHARDED_SCAN_S = 1.0  # how often a cluster's bus looks for masters to read (see _read_masters)

ReadLog = Callable[[str, int, int], Awaitable[list[Event]]]
ReadHead = Callable[[str], Awaitable[tuple[str | None, int]]]


def describe(exc: BaseException) -> str:
    """An error as ``Type: message`` (redis-py's repr names only the type)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def bus_channel(prefix: str, channel: str) -> str:
    """The pub/sub channel of ``channel`` (same hash tag as its keys)."""
    return f"{prefix}:{{{channel}}}:bus"


@dataclass(slots=True, eq=False)
class _Feed:
    """What this node delivered of one subscribed channel."""

    confirmed: asyncio.Future[None]  # Redis confirmed the subscription
    based: asyncio.Future[None]  # the baseline serial is known
    epoch: str | None = None
    delivered: int | None = None  # None until the baseline is known
    target: int = 0  # a serial known to exist: fill up to it even without a later event
    pending: dict[int, Event] = field(default_factory=dict)
    early: list[tuple[str, Sequence[Event]]] = field(default_factory=list)
    filling: bool = False


class RedisBus(Bus):
    """Cross-node fan-out over Redis sharded pub/sub (see the module docstring).

    Args:
        redis: The ``redis.asyncio.Redis`` client (shared with the store), or a
            ``RedisCluster``.
        prefix: The key prefix; pub/sub channel names carry it too.
        sharded: ``redis`` is a ``RedisCluster``: its pub/sub holds a connection to each
            master that owns a subscribed channel's slot, read with
            ``get_sharded_message``.
    """

    def __init__(self, redis: Any, prefix: str, *, sharded: bool = False) -> None:
        self.redis = redis
        self.prefix = prefix
        self.sharded = sharded
        self.origin = secrets.token_hex(8).encode()  # tags this node's presence and signals
        self.read_log: ReadLog | None = None  # set by the store: events after a serial
        self.read_head: ReadHead | None = None  # set by the store: (epoch, latest serial)
        self._feeds: dict[str, _Feed] = {}
        self._names: dict[bytes, str] = {}  # pub/sub channel name → roomcast channel
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        # The pub/sub connections lost and not yet back (a cluster's: by master), and why.
        self._lost: dict[str, str] = {}

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self._reader is None:
            self._pubsub = self.redis.pubsub()
            self._reader = asyncio.create_task(self._read_loop(), name="roomcast-redis-bus")

    async def aclose(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await cancel_and_wait(reader)
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
        self._feeds.clear()
        self._names.clear()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ subscriptions

    async def subscribe(self, channel: str) -> None:
        feed = self._feeds.get(channel)
        if feed is not None:
            await asyncio.shield(feed.based)
            return
        if self._pubsub is None:
            await self.open()
        loop = asyncio.get_running_loop()
        feed = self._feeds[channel] = _Feed(loop.create_future(), loop.create_future())
        name = bus_channel(self.prefix, channel)
        self._names[name.encode()] = channel
        if len(self._feeds) == 1:
            # The first subscription after an idle spell: nothing has read the pub/sub
            # connection meanwhile, so it may be dead (Redis restarted). Start on a fresh one.
            self._renew_pubsub()
        try:
            await self._ssubscribe(name)
            self._wake.set()
            await asyncio.wait_for(asyncio.shield(feed.confirmed), _SUBSCRIBE_TIMEOUT_S)
            assert self.read_head is not None
            epoch, serial = await self.read_head(channel)
        except Exception as exc:
            if self._feeds.get(channel) is feed:
                del self._feeds[channel]
                self._names.pop(name.encode(), None)
            failure = Unavailable(f"could not subscribe to {channel!r} on Redis: {describe(exc)}")
            if not feed.based.done():
                feed.based.set_exception(failure)
                feed.based.exception()  # retrieved: later waiters get their own error
            raise failure from exc
        feed.epoch, feed.delivered = epoch, serial
        early, feed.early = feed.early, []
        feed.based.set_result(None)
        for epoch_seen, events in early:
            self._offer(channel, epoch_seen, events, local=False)

    def _renew_pubsub(self) -> None:
        old, self._pubsub = self._pubsub, self.redis.pubsub()
        self._lost.clear()
        self._wake.set()  # a cluster's readers start on the new one
        if old is not None:
            self._spawn(old.aclose())

    async def _ssubscribe(self, name: str) -> None:
        """SSUBSCRIBE, once more on a fresh connection if the connection was lost."""
        from redis.exceptions import ConnectionError, TimeoutError

        try:
            await self._pubsub.ssubscribe(name)
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.info("the Redis bus connection was lost (%s); reconnecting", describe(exc))
            channels = [bus_channel(self.prefix, ch) for ch in self._feeds]
            self._renew_pubsub()
            await self._pubsub.ssubscribe(*channels)

    async def ping(self) -> None:
        """Raise while the pub/sub connection is lost (``/readyz``): this node would miss
        other nodes' events until it is back."""
        if self._lost:
            reasons = "; ".join(f"{k}: {v}" if k else v for k, v in self._lost.items())
            raise Unavailable(f"the Redis bus connection is lost: {reasons}")

    async def unsubscribe(self, channel: str) -> None:
        # The node may have got a new subscriber since it asked (its request is a task).
        if self.sink is not None and self.sink.occupancy(channel):
            return
        feed = self._feeds.pop(channel, None)
        if feed is None:
            return
        name = bus_channel(self.prefix, channel)
        self._names.pop(name.encode(), None)
        if self._pubsub is not None:
            try:
                await self._pubsub.sunsubscribe(name)
            except Exception as exc:
                log.warning("could not unsubscribe from %s: %r", channel, exc)

    # ------------------------------------------------------------ presence and signals

    async def publish_presence(self, event: PresenceEvent) -> None:
        if self.sink is not None:
            self.sink.on_presence(event)
        await self._publish(event.channel, b"p", _encode(event))

    async def publish_signal(self, event: SignalEvent) -> None:
        if self.sink is not None:
            self.sink.on_signal(event)
        await self._publish(event.channel, b"s", _encode(event))

    async def _publish(self, channel: str, kind: bytes, body: bytes) -> None:
        name = bus_channel(self.prefix, channel)
        try:
            await self.redis.execute_command("SPUBLISH", name, kind + self.origin + b"\n" + body)
        except Exception as exc:
            raise Unavailable(f"could not publish on Redis: {describe(exc)}") from exc

    # ------------------------------------------------------------ events

    def deliver_local(self, channel: str, epoch: str, events: Sequence[Event]) -> None:
        """Events this node just committed: delivered before the append returns."""
        if events:
            self._offer(channel, epoch, events, local=True)

    def _offer(self, channel: str, epoch: str, events: Sequence[Event], *, local: bool) -> None:
        feed = self._feeds.get(channel)
        if feed is None:
            # Not subscribed here: this node's own events still reach its sink (as on one
            # node); other nodes' events for it are a leftover of an unsubscribe.
            if local:
                self._sink_events(channel, events)
            return
        if feed.delivered is None:
            feed.early.append((epoch, events))
            return
        if feed.epoch != epoch:
            if feed.epoch is not None:
                log.warning("channel %s has a new epoch %s: its log was reset", channel, epoch)
                feed.delivered, feed.target = 0, 0
                feed.pending.clear()
                self._reset(channel, epoch)
            feed.epoch = epoch
        delivered = feed.delivered
        for event in events:
            if event.serial > delivered:
                feed.pending[event.serial] = event
        self._drain(channel, feed)

    def _reset(self, channel: str, epoch: str) -> None:
        """Tell the sink that ``channel``'s log started over: its subscribers hold serials of
        the old one."""
        if self.sink is not None:
            try:
                self.sink.on_epoch(channel, epoch)
            except Exception:
                log.exception("bus sink failed on the new epoch of %s", channel)

    def _drain(self, channel: str, feed: _Feed) -> None:
        assert feed.delivered is not None
        run: list[Event] = []
        pending = feed.pending
        while feed.delivered + 1 in pending:
            feed.delivered += 1
            run.append(pending.pop(feed.delivered))
        if run:
            self._sink_events(channel, run)
        if (pending or feed.target > feed.delivered) and not feed.filling:
            feed.filling = True
            self._spawn(self._fill(channel, feed))

    def _sink_events(self, channel: str, events: Sequence[Event]) -> None:
        if self.sink is not None:
            try:
                self.sink.on_events(channel, events)
            except Exception:
                log.exception("bus sink failed for %s", channel)

    async def _fill(self, channel: str, feed: _Feed) -> None:
        """Read from the log what lies between the last delivered serial and the next held
        (or known) one, so that nothing is delivered out of order or skipped."""
        try:
            while self._feeds.get(channel) is feed and feed.delivered is not None:
                lo = feed.delivered
                hi = min(feed.pending) if feed.pending else feed.target + 1
                if hi <= lo + 1:
                    if not feed.pending:
                        break
                    self._drain(channel, feed)
                    continue
                epoch = feed.epoch
                assert self.read_log is not None
                try:
                    events = await self.read_log(channel, lo, hi - lo - 1)
                except Exception as exc:
                    log.warning(
                        "could not read %s after %d to fill a gap: %s", channel, lo, describe(exc)
                    )
                    await asyncio.sleep(_FILL_RETRY_S * 5)
                    continue
                if feed.epoch != epoch or feed.delivered != lo:
                    continue
                if not events or events[0].serial != lo + 1:
                    log.warning(
                        "events of %s after %d were removed before this node saw them",
                        channel,
                        lo,
                    )
                    feed.delivered = (events[0].serial - 1) if events else hi - 1
                for event in events:
                    if event.serial > feed.delivered and event.serial < hi:
                        feed.pending[event.serial] = event
                self._drain(channel, feed)
        finally:
            feed.filling = False

    async def _resync(self, channel: str) -> None:
        """After a reconnect: catch up on what was published while this node was away."""
        feed = self._feeds.get(channel)
        if feed is None or feed.delivered is None or self.read_head is None:
            return
        delay = _FILL_RETRY_S
        while True:
            try:
                epoch, serial = await self.read_head(channel)
                break
            except Exception as exc:
                log.warning("could not resync %s yet: %s", channel, describe(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            if self._feeds.get(channel) is not feed:
                return
        if feed.delivered is None or self._feeds.get(channel) is not feed:
            return
        if epoch is not None and feed.epoch is not None and epoch != feed.epoch:
            log.warning("channel %s has a new epoch %s: its log was reset", channel, epoch)
            feed.delivered, feed.target = 0, 0
            feed.pending.clear()
            self._reset(channel, epoch)
        feed.epoch = epoch if epoch is not None else feed.epoch
        feed.target = max(feed.target, serial)
        self._drain(channel, feed)

    # ------------------------------------------------------------ the reader

    async def _read_loop(self) -> None:
        if self.sharded:
            await self._read_masters()
            return
        while True:
            pubsub = self._pubsub
            if pubsub is None or not pubsub.subscribed:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._read_from(
                pubsub, "", lambda p: p.get_message(timeout=1.0), lambda p: bool(p.subscribed)
            )

    async def _read_masters(self) -> None:
        """A cluster's pub/sub holds a connection to each master that owns a subscribed
        channel's slot: each is read by a task of its own (see :meth:`_read_master`), started
        when the connection appears (a subscription wakes this loop; a slot that moved to
        another master is found within :data:`_SHARDED_SCAN_S`)."""
        readers: dict[tuple[int, str], asyncio.Task[None]] = {}
        try:
            while True:
                self._wake.clear()
                for key in [key for key, task in readers.items() if task.done()]:
                    del readers[key]
                pubsub = self._pubsub
                for name in list(pubsub.node_pubsub_mapping) if pubsub is not None else []:
                    key = (id(pubsub), name)
                    if key not in readers:
                        readers[key] = asyncio.create_task(
                            self._read_master(pubsub, name), name=f"roomcast-redis-bus-{name}"
                        )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _SHARDED_SCAN_S)
        finally:
            for task in readers.values():
                task.cancel()

    async def _read_master(self, pubsub: Any, name: str) -> None:
        """Read one master's connection of a cluster's pub/sub until nothing is subscribed
        there (redis-py then drops it) or the pub/sub is replaced.

        The read waits for the next message without a timeout, as the single server's
        reader does in effect: redis-py's reads with a timeout hold a lock of the
        connection that ``SSUBSCRIBE`` there waits for (a subscription took up to the
        timeout), and its reads of every master in turn made an event on one master wait
        for the others' reads (tens of ms). A connection that drops fails the read at once.
        """

        async def read(pubsub: Any) -> dict[str, Any] | None:
            node = self.redis.get_node(node_name=name)
            connection = pubsub.node_pubsub_mapping.get(name)
            if (
                node is None
                or connection is None
                or connection.connection is None
                or not connection.subscribed
            ):
                # Nothing to read yet (SSUBSCRIBE's sender opens the connection) or any more
                # (a master gone from the layout, whose connection redis-py drops next).
                await asyncio.sleep(0.01)
                return None
            message: dict[str, Any] | None = await pubsub.get_sharded_message(
                target_node=node, timeout=None
            )
            return message

        await self._read_from(pubsub, name, read, lambda p: name in p.node_pubsub_mapping)

    async def _refresh_layout(self) -> None:
        """A master's connection failed: ask the cluster for its layout again. If a replica
        took the master's place, redis-py then moves the subscriptions there (the node
        may not send a command to those slots itself for a long time)."""
        try:
            await self.redis.nodes_manager.initialize()
        except Exception as exc:
            log.debug("could not refresh the Redis Cluster's layout: %s", describe(exc))

    async def _read_from(
        self,
        pubsub: Any,
        source: str,
        read: Callable[[Any], Awaitable[dict[str, Any] | None]],
        reading: Callable[[Any], bool],
    ) -> None:
        """Handle what ``read(pubsub)`` gets from one connection of ``pubsub`` (``source``
        names it) while ``reading(pubsub)`` and ``pubsub`` is the current one. A connection
        that fails is read again with a growing pause (redis-py reconnects it and subscribes
        again); when it answers again, every channel catches up from the log."""
        backoff = 0.1
        try:
            while pubsub is self._pubsub and reading(pubsub):
                try:
                    message = await read(pubsub)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if pubsub is not self._pubsub:
                        return  # a pub/sub that was replaced (and closed) meanwhile
                    if source not in self._lost:
                        where = f" to {source}" if source else ""
                        log.warning(
                            "lost the Redis bus connection%s (%s); reconnecting",
                            where,
                            describe(exc),
                        )
                    self._lost[source] = describe(exc)
                    if self.sharded:
                        self._spawn(self._refresh_layout())
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                if source in self._lost and pubsub is self._pubsub:
                    del self._lost[source]
                    backoff = 0.1
                    log.info("the Redis bus connection is back")
                    for channel in list(self._feeds):
                        self._spawn(self._resync(channel))
                if message is not None:
                    try:
                        self._handle(message)
                    except Exception:
                        log.exception("could not handle a Redis bus message")
        finally:
            if pubsub is self._pubsub:
                self._lost.pop(source, None)  # not read any more, so not lost either

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        channel = self._names.get(message["channel"])
        if channel is None:
            return
        if kind == "smessage":
            self._on_message(channel, message["data"])
        elif kind in ("ssubscribe", "sunsubscribe"):
            self._on_subscription(channel, confirmed=kind == "ssubscribe")

    def _on_subscription(self, channel: str, *, confirmed: bool) -> None:
        feed = self._feeds.get(channel)
        if feed is None:
            return
        if confirmed and not feed.confirmed.done():
            feed.confirmed.set_result(None)
        elif feed.delivered is not None:
            # Subscribed again after a reconnect: catch up. Or unsubscribed without asking
            # (this node's own unsubscribe forgets the channel first): the master gave the
            # channel's slot away (a resharding). Reading the channel's head makes the
            # cluster client learn the new owner and move the subscription there, and the
            # log fills what was published meanwhile.
            self._spawn(self._resync(channel))

    def _on_message(self, channel: str, data: bytes) -> None:
        head, _, body = data[1:].partition(b"\n")
        tag = data[:1]
        if tag == b"e":
            self._offer(channel, head.decode(), _events(body), local=False)
        elif head != self.origin and self.sink is not None:
            if tag == b"p":
                self.sink.on_presence(_presence(body))
            elif tag == b"s":
                self.sink.on_signal(_signal(body))


__all__ = ["RedisBus", "bus_channel", "describe"]
