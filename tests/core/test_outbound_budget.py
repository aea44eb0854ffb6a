"""A connection's outbound byte budget, in this process over a transport that never drains:
replies and replays pause the connection instead of growing its queue, a connection that
stays paused is closed with 4008, and nothing of it is kept once it is gone."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref

from inproc_node import RecordingTransport, connect, running_node, settle
from roomcast.core.authz import Principal
from roomcast.core.connection import Connection
from roomcast.core.node import Node
from roomcast.protocol.capabilities import ALL
from roomcast.protocol.errors import CLOSE_SLOW_CONSUMER
from roomcast.protocol.messages import Publish

CHANNEL = "room:budget"
BUDGET = 64 * 1024
PAYLOAD = "x" * 2000
PAGE = 10  # messages per history reply: a reply is about 20 KB


async def fill(node: Node, count: int) -> None:
    alice = Principal("alice", ALL, "key")
    batch = [Publish(channel=CHANNEL, data=[i, PAYLOAD]) for i in range(count)]
    await node.publish_batch(alice, CHANNEL, batch)


def history(ref: int) -> str:
    return json.dumps({"action": "history", "channel": CHANNEL, "limit": PAGE, "ref": ref})


async def read_requests(conn: Connection, count: int, read: list[int]) -> None:
    """What a transport's reader does: one frame at a time, as ``receive`` returns (and
    the next one arrives)."""
    for ref in range(1, count + 1):
        await asyncio.sleep(0)
        await conn.receive(history(ref), is_text=True)
        read.append(ref)


async def stuck_connection(node: Node) -> tuple[Connection, RecordingTransport]:
    """A connection whose transport takes ``connected``, then never drains again."""
    transport = RecordingTransport()
    conn = await connect(node, "reader", transport)
    await settle()
    transport.backed_up = True
    return conn, transport


async def test_replies_to_a_client_that_never_reads_stay_within_the_byte_budget() -> None:
    async with running_node(outbound_bytes=BUDGET) as node:
        await fill(node, 100)
        conn, transport = await stuck_connection(node)
        read: list[int] = []
        reading = asyncio.ensure_future(read_requests(conn, 60, read))
        largest, reply = 0, 0
        for _ in range(300):  # the invariant holds at every turn of the loop
            await asyncio.sleep(0)
            largest = max(largest, conn.queued_bytes)
            reply = max(reply, max(map(len, conn._out), default=0))
        assert reply > 10_000
        assert largest > BUDGET // 2  # it was filled ...
        assert largest <= BUDGET + reply  # ... by at most one reply over the budget
        assert len(read) < 20  # and it stopped reading the client's requests
        transport.backed_up = False
        transport.release.set()
        await asyncio.wait_for(reading, 5)
        for _ in range(100):
            await settle()
            refs = [m.get("ref") for m in transport.messages() if m["action"] == "history"]
            if len(refs) == 60:
                break
        assert refs == list(range(1, 61))  # every reply, in order, once it drains
        await conn.finish(clean=True)


async def test_a_replay_to_a_client_that_never_reads_stays_within_the_byte_budget() -> None:
    async with running_node(outbound_bytes=BUDGET) as node:
        await fill(node, 300)  # a replay of about 600 KB
        conn, _ = await stuck_connection(node)
        attach = {"action": "attach", "channel": CHANNEL, "from_serial": 0, "ref": 1}
        await conn.receive(json.dumps(attach), is_text=True)
        largest = 0
        for _ in range(300):
            await asyncio.sleep(0)
            largest = max(largest, conn.queued_bytes)
        assert BUDGET // 2 < largest <= BUDGET + 4096
        await conn.finish(clean=True)


async def test_attaches_with_a_rewind_are_answered_one_at_a_time() -> None:
    """A snapshot is read when its reply's turn comes: 30 pipelined attaches with a
    ``rewind`` of about 200 KB each (each cut to the budget) hold one of them beyond the
    budget, not 30."""
    async with running_node(outbound_bytes=BUDGET) as node:
        await fill(node, 100)
        conn, _ = await stuck_connection(node)
        rewind = {"action": "attach", "channel": CHANNEL, "rewind": 100}
        await conn.receive(json.dumps([rewind | {"ref": ref} for ref in range(30)]), is_text=True)
        largest, reply = 0, 0
        for _ in range(300):
            await asyncio.sleep(0)
            largest = max(largest, conn.queued_bytes)
            reply = max(reply, max(map(len, conn._out), default=0))
        assert BUDGET // 2 < reply <= BUDGET  # the rewind is cut to the budget
        assert BUDGET < largest <= BUDGET + reply
        await conn.finish(clean=True)


async def test_a_client_paused_too_long_is_closed_with_4008_and_leaves_nothing() -> None:
    async with running_node(outbound_bytes=BUDGET, outbound_stall_s=0.2) as node:
        await fill(node, 100)
        conn, transport = await stuck_connection(node)
        reading = asyncio.ensure_future(read_requests(conn, 60, []))
        for _ in range(200):
            if transport.closed is not None:
                break
            await asyncio.sleep(0.02)
        assert transport.closed is not None and transport.closed[0] == CLOSE_SLOW_CONSUMER
        await asyncio.wait_for(reading, 5)  # it stops waiting for room
        assert conn._out == []
        await conn.finish(clean=True)
        gone = weakref.ref(conn)
        del conn, reading
        await settle()  # the callbacks of the tasks it ended
        gc.collect()
        assert gone() is None  # no reply, future or history page holds it
