"""The subscriber core in this process: delivery, batching, the attach barrier, replay
pacing, the slow-consumer rule, token expiry and reset, over a fake transport."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Sequence

import pytest
from starlette.websockets import WebSocketDisconnect

from inproc_node import RecordingTransport, connect, running_node, settle
from roomcast.backends.base import REPLAY_PAGE
from roomcast.core.authz import Capability, Principal
from roomcast.core.fanout import AttachResult
from roomcast.core.node import Node
from roomcast.core.subscriber import MAX_FRAME_MESSAGES, SubscriberCore
from roomcast.protocol.capabilities import ALL
from roomcast.protocol.codec import codec_for
from roomcast.protocol.errors import (
    CLOSE_AUTH,
    CLOSE_SERVICE_RESTART,
    CLOSE_SLOW_CONSUMER,
    Forbidden,
)
from roomcast.protocol.messages import (
    Append,
    Attach,
    Event,
    Pong,
    Publish,
    Reply,
    Signal,
    SignalEvent,
    Update,
)
from roomcast.protocol.session import Attachment

CHANNEL = "room:core"


def subscriber(
    node: Node, transport: RecordingTransport, kind: type[SubscriberCore] = SubscriberCore
) -> SubscriberCore:
    return kind(node.fanout, transport, codec_for("json"), {})


async def publish(node: Node, count: int, channel: str = CHANNEL) -> None:
    alice = Principal("alice", ALL, "key")
    for start in range(0, count, 1000):
        batch = [Publish(channel=channel, data=i) for i in range(start, min(count, start + 1000))]
        await node.publish_batch(alice, channel, batch)


async def attach(
    node: Node, sub: SubscriberCore, from_serial: int | None = None
) -> tuple[Attachment, AttachResult]:
    """Subscribe first, then read the snapshot, as every transport does."""
    bob = Principal("bob", ALL, "key")
    attachment = sub.begin_attach(bob, CHANNEL)
    return attachment, await node.attach(bob, Attach(channel=CHANNEL, from_serial=from_serial))


async def test_everything_queued_in_one_turn_goes_out_as_one_frame() -> None:
    async with running_node() as node:
        transport = RecordingTransport()
        sub = subscriber(node, transport)
        attachment, result = await attach(node, sub)
        await sub.finish_attach(attachment, result)
        await settle()
        transport.frames.clear()
        await publish(node, 3)
        await settle()
        serials = [m["serial"] for m in transport.messages() if m["action"] == "event"]
        assert serials == [1, 2, 3]
        assert len(transport.frames) <= 3


def live_event(serial: int) -> Event:
    return Event(channel=CHANNEL, serial=serial, type="create", client_id="alice", timestamp=1)


async def live_subscriber(node: Node, transport: RecordingTransport) -> SubscriberCore:
    sub = subscriber(node, transport)
    attachment, result = await attach(node, sub)
    await sub.finish_attach(attachment, result)
    await settle()
    transport.frames.clear()
    return sub


async def test_live_events_with_nothing_queued_are_written_at_once_in_one_frame() -> None:
    async with running_node() as node:
        transport = RecordingTransport()
        await live_subscriber(node, transport)
        node.fanout.on_events(CHANNEL, [live_event(1), live_event(2)])
        assert len(transport.frames) == 1  # before the turn ends: no queue, no flush
        assert [m["serial"] for m in transport.messages()] == [1, 2]
        node.fanout.on_events(CHANNEL, [live_event(2), live_event(3)])
        assert [m["serial"] for m in transport.messages()] == [1, 2, 3]


async def test_a_live_event_never_overtakes_what_is_queued() -> None:
    async with running_node() as node:
        transport = RecordingTransport()
        sub = await live_subscriber(node, transport)
        sub.push(codec_for("json").encode(Pong(ref=7)))
        node.fanout.on_events(CHANNEL, [live_event(1)])
        assert transport.frames == []  # both wait for the end of the turn, in order
        await settle()
        sent = transport.messages()
        assert [m["action"] for m in sent] == ["pong", "event"]
        assert len(transport.frames) == 1


async def test_a_heartbeat_is_written_at_once_unless_something_is_queued_before_it() -> None:
    async with running_node() as node:
        transport = RecordingTransport()
        sub = await live_subscriber(node, transport)
        before = sub.last_sent
        sub.send_heartbeat()
        assert [m["action"] for m in transport.messages()] == ["heartbeat"]  # this turn
        assert sub.last_sent > before
        transport.frames.clear()
        sub.push(codec_for("json").encode(Pong(ref=7)))
        sub.send_heartbeat()
        assert transport.frames == []  # behind the pong, at the end of the turn
        await settle()
        assert [m["action"] for m in transport.messages()] == ["pong", "heartbeat"]
        transport.frames.clear()
        transport.backed_up = True
        sub.send_heartbeat()
        await settle()
        assert transport.frames == []
        transport.release.set()
        await settle()
        assert [m["action"] for m in transport.messages()] == ["heartbeat"]


async def test_a_backed_up_transport_gets_live_events_in_order_once_it_drains() -> None:
    async with running_node() as node:
        transport = RecordingTransport()
        await live_subscriber(node, transport)
        transport.backed_up = True
        node.fanout.on_events(CHANNEL, [live_event(1)])
        node.fanout.on_events(CHANNEL, [live_event(2)])
        await settle()
        assert transport.frames == []
        transport.release.set()
        await settle()
        assert [m["serial"] for m in transport.messages()] == [1, 2]


async def test_live_events_wait_behind_the_snapshot_and_are_not_sent_twice() -> None:
    async with running_node() as node:
        await publish(node, 5)
        transport = RecordingTransport()
        sub = subscriber(node, transport)
        attachment, result = await attach(node, sub, from_serial=2)
        await publish(node, 2)  # live while the snapshot is out: held back
        await settle()
        assert transport.frames == []
        await sub.finish_attach(attachment, result)
        await settle()
        sent = transport.messages()
        assert sent[0]["action"] == "attached" and sent[0]["serial"] == 5
        serials = [m["serial"] for m in sent if m["action"] == "event"]
        assert serials == [3, 4, 5, 6, 7]


async def stream_one(node: Node, fragments: int) -> None:
    """A streamed message of ``fragments`` appends, ended ``complete``, by alice."""
    alice = Principal("alice", ALL, "key")
    ok = await node.publish(alice, Publish(channel=CHANNEL, data="", streaming=True))
    assert isinstance(ok.serial, int)
    for k in range(fragments):
        await node.append_to(alice, Append(channel=CHANNEL, msg_serial=ok.serial, data=f"w{k} "))
    await node.update(alice, Update(channel=CHANNEL, msg_serial=ok.serial, status="complete"))


async def test_an_attach_for_some_types_gets_only_those_in_the_replay_and_live() -> None:
    async with running_node(rollup_ms=0) as node:
        await stream_one(node, 3)  # serials 1 (create) .. 4 (appends) .. 5 (update)
        transport = RecordingTransport()
        sub = subscriber(node, transport)
        bob = Principal("bob", ALL, "key")
        attachment = sub.begin_attach(bob, CHANNEL, ["create", "update"])
        req = Attach(channel=CHANNEL, from_serial=0, types=["create", "update"])
        result = await node.attach(bob, req)
        await stream_one(node, 2)  # live while the snapshot is out: held back, then filtered
        await sub.finish_attach(attachment, result)
        await stream_one(node, 2)  # live
        await settle()
        events = [(m["serial"], m["type"]) for m in transport.messages() if m["action"] == "event"]
        assert events == [
            (1, "create"),
            (5, "update"),
            (6, "create"),
            (9, "update"),
            (10, "create"),
            (13, "update"),
        ]


async def test_a_long_replay_is_paced_by_what_the_client_drains() -> None:
    total = REPLAY_PAGE + 2 * MAX_FRAME_MESSAGES
    async with running_node() as node:
        await publish(node, total)
        transport = RecordingTransport()
        transport.backed_up = True
        sub = subscriber(node, transport)
        attachment, result = await attach(node, sub, from_serial=0)
        replay = asyncio.ensure_future(sub.finish_attach(attachment, result))
        await settle()
        assert not replay.done()  # waits for the client before it reads the next page
        transport.release.set()
        await asyncio.wait_for(replay, 5)
        await asyncio.sleep(0.05)
        serials = [m["serial"] for m in transport.messages() if m["action"] == "event"]
        assert serials == list(range(1, total + 1))


async def test_a_backlog_over_the_outbound_queue_closes_with_4008() -> None:
    async with running_node(outbound_queue=10) as node:
        transport = RecordingTransport()
        sub = subscriber(node, transport)
        attachment, result = await attach(node, sub)
        await sub.finish_attach(attachment, result)
        await settle()
        transport.backed_up = True
        slow = node.stats.slow_consumers
        await publish(node, 30)
        await settle()
        assert transport.closed is not None and transport.closed[0] == CLOSE_SLOW_CONSUMER
        assert node.stats.slow_consumers == slow + 1


async def test_held_events_over_the_limit_close_a_subscriber_behind_its_replay() -> None:
    async with running_node(outbound_queue=5) as node:
        transport = RecordingTransport()
        sub = subscriber(node, transport)
        await attach(node, sub)  # the snapshot is never sent: everything live is held
        await publish(node, 10)
        await settle()
        assert transport.closed is not None and transport.closed[0] == CLOSE_SLOW_CONSUMER


async def test_an_expired_token_sends_40100_then_closes_with_4001() -> None:
    async with running_node() as node:
        transport = RecordingTransport()
        sub = subscriber(node, transport)
        sub.expire_at(time.time() - 5)  # past its leeway already
        for _ in range(100):
            if transport.closed is not None:
                break
            await asyncio.sleep(0.01)
        assert transport.closed == (CLOSE_AUTH, "token expired")
        [error] = transport.messages()
        assert (error["action"], error["code"]) == ("error", 40100)


async def test_attaching_needs_the_subscribe_capability() -> None:
    async with running_node() as node:
        sub = subscriber(node, RecordingTransport())
        reader = Principal("carol", Capability.parse({"other:*": ["subscribe"]}), "key")
        with pytest.raises(Forbidden):
            sub.begin_attach(reader, CHANNEL)
        assert node.fanout.occupancy(CHANNEL) == 0 and sub.attachments == {}


async def test_a_renewed_token_moves_the_expiry() -> None:
    async with running_node() as node:
        transport = RecordingTransport()
        sub = subscriber(node, transport)
        sub.expire_at(time.time() - 5)
        sub.expire_at(time.time() + 3600)  # renewed before the timer ran
        await asyncio.sleep(0.05)
        assert transport.closed is None


async def test_a_channel_whose_log_restarted_closes_its_subscribers_with_1012() -> None:
    async with running_node() as node:
        transport = RecordingTransport()
        sub = subscriber(node, transport)
        await attach(node, sub)
        node.fanout.on_epoch(CHANNEL, "new-epoch")
        await settle()
        assert transport.closed is not None and transport.closed[0] == CLOSE_SERVICE_RESTART


async def test_after_a_store_reset_a_restarted_log_ends_its_subscribers_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A channel's new epoch is how a node often learns first that the store lost its data.
    Its subscribers end after the node has put back what it holds, so that one that comes
    back at once is not ended again by the node's next look at the store."""
    async with running_node() as node:
        early = RecordingTransport()
        await attach(node, subscriber(node, early))
        monkeypatch.setattr(node.store, "_lifetime", "after-a-flush")
        node.fanout.on_epoch(CHANNEL, "new-epoch")
        assert node.fanout.occupancy(CHANNEL) == 0  # nothing of the new log reaches it
        await settle()
        assert early.closed is not None and early.closed[0] == CLOSE_SERVICE_RESTART

        back = RecordingTransport()
        await attach(node, subscriber(node, back))
        await node.presence_keeper.tick()
        await settle()
        assert back.closed is None


class Broken(RecordingTransport):
    async def send(self, frame: bytes) -> None:
        raise ConnectionResetError("gone")


class Noticing(SubscriberCore):
    __slots__ = ("lost",)

    def transport_lost(self) -> None:
        self.lost = True


async def test_a_failed_send_ends_the_subscriber_and_leaves_no_task_unretrieved() -> None:
    async with running_node() as node:
        transport = Broken()
        transport.backed_up = True
        sub = subscriber(node, transport, Noticing)
        sub.push(b"{}")
        await settle()
        assert sub.closed and getattr(sub, "lost", False)
        assert sub._send_task is None


class Gone(RecordingTransport):
    """A socket whose peer reset it: nothing can be written any more."""

    async def send(self, frame: bytes) -> None:
        await asyncio.sleep(0)  # the write is attempted, then the peer is found gone
        raise WebSocketDisconnect(1006)


async def test_sends_on_connections_that_went_away_end_them_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Subscribers reset while a publisher floods their channel (the send task of each
    fails mid-flood): each ends with nothing logged above debug, and no task is left with
    an exception nobody retrieved (asyncio would log that at ERROR)."""
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    caplog.set_level(logging.DEBUG)
    async with running_node() as node:
        transports = [Gone() for _ in range(30)]
        conns = [await connect(node, f"reader-{i}", t) for i, t in enumerate(transports)]
        for conn in conns:
            await conn.receive(f'{{"action":"attach","ref":1,"channel":"{CHANNEL}"}}', is_text=True)
        await settle()
        for transport in transports:
            transport.backed_up = True  # the next writes take the send task's path
        for _ in range(5):
            await publish(node, 50)
            await asyncio.sleep(0)
        await settle()
        for conn in conns:
            assert conn.closed and conn._send_task is None
            await conn.finish(clean=False)
        del conns, transports
        gc.collect()
        await settle()
    assert unhandled == []
    assert [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG] == []


class Unencodable:
    """A framing that cannot encode events and signals (as with a value its format cannot
    carry); anything else it encodes as JSON."""

    format = "broken"

    def encode(self, message: Reply) -> bytes:
        if isinstance(message, Event | SignalEvent):
            raise OverflowError("int too big to convert")
        return codec_for("json").encode(message)

    def join(self, frames: Sequence[bytes]) -> bytes:
        return codec_for("json").join(frames)


class Raising(SubscriberCore):
    __slots__ = ()

    def deliver(self, channel: str, events: Sequence[Event], frames: Sequence[bytes]) -> None:
        raise RuntimeError("a bug in one subscriber")


async def test_one_subscriber_that_fails_costs_the_others_nothing() -> None:
    """A format that cannot encode an event closes its readers with 1012 (they attach again
    and read it from the log), and so does a subscriber that raises; everyone else gets
    every event and signal."""
    async with running_node() as node:
        readers = [RecordingTransport() for _ in range(10)]
        broken, raising = RecordingTransport(), RecordingTransport()
        subs = [subscriber(node, t) for t in readers]
        subs.append(SubscriberCore(node.fanout, broken, Unencodable(), {}))
        subs.append(subscriber(node, raising, Raising))
        for sub in subs:
            await sub.finish_attach(*await attach(node, sub))
        await settle()
        await publish(node, 3)
        await node.signal(Principal("alice", ALL, "key"), Signal(channel=CHANNEL, name="typing"))
        await settle()
        for transport in readers:
            sent = transport.messages()
            assert [m["serial"] for m in sent if m["action"] == "event"] == [1, 2, 3]
            assert [m["action"] for m in sent].count("signal") == 1
            assert transport.closed is None
        assert broken.closed is not None and broken.closed[0] == CLOSE_SERVICE_RESTART
        assert raising.closed is not None and raising.closed[0] == CLOSE_SERVICE_RESTART
