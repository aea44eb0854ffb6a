"""The node and a WebSocket connection in this process, over ``memory://``: the rules
that every transport gets from the core (sizes, own/any changes, identity), and a
connection's requests answered in order."""

from __future__ import annotations

import json

import pytest

from inproc_node import RecordingTransport, connect, running_node, settle
from roomcast.backends.base import Appended
from roomcast.core.authz import Capability, Principal
from roomcast.core.node import META_CHANNELS
from roomcast.protocol.capabilities import ALL
from roomcast.protocol.errors import Forbidden, TooLarge, Unauthorized, Unavailable
from roomcast.protocol.messages import (
    Append,
    Attach,
    Cancel,
    Delete,
    Event,
    History,
    Publish,
    Update,
)

CHANNEL = "room:node"
ALICE = Principal("alice", ALL, "key")


def own_only() -> Capability:
    return Capability.parse(
        {"*": ["subscribe", "publish", "update-own", "delete-own", "cancel-own"]}
    )


async def test_the_node_refuses_a_message_over_the_size_limit_whatever_the_transport() -> None:
    async with running_node(max_message_bytes=100) as node:
        with pytest.raises(TooLarge, match="over the 100 byte limit"):
            await node.publish(ALICE, Publish(channel=CHANNEL, data="x" * 200))
        ok = await node.publish(ALICE, Publish(channel=CHANNEL, data="x" * 50))
        with pytest.raises(TooLarge):
            await node.update(ALICE, Update(channel=CHANNEL, msg_serial=ok.serial, data="y" * 200))
        with pytest.raises(TooLarge):
            await node.append_to(ALICE, Append(channel=CHANNEL, msg_serial=1, data="z" * 200))


async def test_a_frame_within_the_limit_is_not_measured_again() -> None:
    async with running_node(max_message_bytes=100) as node:
        big = Publish(channel=CHANNEL, data="x" * 200)
        # The frame's size is the transport's word: one within the limit holds no payload
        # over it, so the node takes it without encoding the payload.
        stored = await node.submit_publish(ALICE, big, frame_size=90)
        assert stored.serial == 1
        with pytest.raises(TooLarge):
            node.submit_publish(ALICE, big, frame_size=300)


async def test_own_messages_only_for_an_own_capability() -> None:
    async with running_node() as node:
        bob = Principal("bob", own_only(), "key")
        mine = await node.publish(bob, Publish(channel=CHANNEL, data="bob's"))
        theirs = await node.publish(ALICE, Publish(channel=CHANNEL, data="alice's"))
        assert isinstance(mine.serial, int) and isinstance(theirs.serial, int)
        await node.update(bob, Update(channel=CHANNEL, msg_serial=mine.serial, data="edited"))
        with pytest.raises(Forbidden, match="not yours to update"):
            await node.update(bob, Update(channel=CHANNEL, msg_serial=theirs.serial, data="x"))
        with pytest.raises(Forbidden, match="not yours to delete"):
            await node.delete(bob, Delete(channel=CHANNEL, msg_serial=theirs.serial))
        await node.delete(ALICE, Delete(channel=CHANNEL, msg_serial=mine.serial))  # any


async def test_an_answer_to_your_message_is_yours_to_cancel() -> None:
    async with running_node() as node:
        bob = Principal("bob", own_only(), "key")
        asked = await node.publish(bob, Publish(channel=CHANNEL, data="a question"))
        answer = await node.publish(
            ALICE,
            Publish(channel=CHANNEL, data="", streaming=True, extras={"reply_to": asked.serial}),
        )
        assert isinstance(answer.serial, int)
        ok = await node.cancel(bob, Cancel(channel=CHANNEL, msg_serial=answer.serial))
        assert isinstance(ok.serial, int)


async def test_agent_names_are_reserved_for_key_holders() -> None:
    async with running_node() as node:
        node.agent_names = frozenset({"helper"})
        with pytest.raises(Unauthorized, match="belongs to an agent"):
            node.identities.anonymous("helper")
        assert node.identities.anonymous(None).client_id.startswith("anon-")
        assert node.identities.anonymous("carol").client_id == "carol"


async def test_a_connection_answers_pipelined_requests_in_order() -> None:
    async with running_node() as node:
        transport = RecordingTransport()
        conn = await connect(node, "alice", transport)
        frame = [
            {"action": "attach", "channel": CHANNEL, "from_serial": 0, "ref": 1},
            *({"action": "publish", "channel": CHANNEL, "data": i, "ref": 2 + i} for i in range(5)),
            {"action": "publish", "channel": CHANNEL, "data": "x" * 100_000, "ref": 7},
            {"action": "ping", "ref": 8},
        ]
        data = json.dumps(frame)
        await conn.receive(data, is_text=True)
        for _ in range(50):
            await settle()
            refs = [m.get("ref") for m in transport.messages() if m.get("ref") is not None]
            if len(refs) >= 8:
                break
        sent = transport.messages()
        assert sent[0]["action"] == "connected"
        replies = [m for m in sent if m.get("ref") is not None]
        assert [m["ref"] for m in replies] == [1, 2, 3, 4, 5, 6, 7, 8]
        assert [m["serial"] for m in replies[1:6]] == [1, 2, 3, 4, 5]
        assert replies[6]["code"] == 41300 and replies[7]["action"] == "pong"
        events = [m["serial"] for m in sent if m["action"] == "event"]
        assert events == [1, 2, 3, 4, 5]  # replayed or live, each once, in order
        await conn.finish(clean=True)
        assert node.fanout.occupancy(CHANNEL) == 0 and not node.connections


async def test_every_action_that_fans_out_counts_against_a_rate() -> None:
    """Signals and presence take from their own bucket, reactions and deletes from the
    publish bucket: a flood of them is refused with 42900 instead of reaching readers."""
    limits = {"publish_rate": 50, "publish_burst": 5, "ephemeral_rate": 50, "ephemeral_burst": 10}
    async with running_node(**limits) as node:
        reader_transport = RecordingTransport()
        reader = await connect(node, "bob", reader_transport)
        attach = {"action": "attach", "channel": CHANNEL, "ref": 1}
        await reader.receive(json.dumps(attach), is_text=True)
        transport = RecordingTransport()
        conn = await connect(node, "alice", transport)
        await conn.receive(json.dumps({"action": "publish", "channel": CHANNEL}), is_text=True)
        flood = [
            *({"action": "signal", "channel": CHANNEL, "name": "typing"} for _ in range(100)),
            *(
                {"action": "presence", "channel": CHANNEL, "op": "update", "data": k}
                for k in range(20)
            ),
            *(
                {"action": "annotate", "channel": CHANNEL, "msg_serial": 1, "kind": "reaction"}
                | {"name": f"r{k}", "op": "add"}
                for k in range(20)
            ),
        ]
        await conn.receive(json.dumps(flood), is_text=True)
        for _ in range(50):
            await settle()
        refused = [m for m in transport.messages() if m.get("code") == 42900]
        assert len(refused) >= 110 - 12 + 20 - 6  # beyond the bursts (and a token or two)
        signals = [m for m in reader_transport.messages() if m["action"] == "signal"]
        assert 0 < len(signals) <= 12
        assert reader_transport.closed is None
        await conn.finish(clean=True)
        await reader.finish(clean=True)


async def test_a_history_page_is_cut_to_the_outbound_budget() -> None:
    async with running_node(outbound_bytes=10_000) as node:
        for i in range(10):
            await node.publish(ALICE, Publish(channel=CHANNEL, data=f"{i}" * 3000))
        newest = await node.history(ALICE, History(channel=CHANNEL, limit=10))
        assert [m.msg_serial for m in newest.messages] == [8, 9, 10] and newest.has_more
        oldest = await node.history(ALICE, History(channel=CHANNEL, limit=10, after=0))
        assert [m.msg_serial for m in oldest.messages] == [1, 2, 3] and oldest.has_more
        one = await node.history(ALICE, History(channel=CHANNEL, limit=1, before=2))
        assert [m.msg_serial for m in one.messages] == [1] and not one.has_more


async def test_rewind_gives_the_newest_messages_that_fit_the_outbound_budget() -> None:
    async with running_node(outbound_bytes=10_000) as node:
        for i in range(10):
            await node.publish(ALICE, Publish(channel=CHANNEL, data=f"{i}" * 3000))
        result = await node.attach(ALICE, Attach(channel=CHANNEL, rewind=10))
        assert [m.msg_serial for m in result.attached.messages] == [8, 9, 10]


async def test_an_announcement_held_back_by_a_store_outage_is_stored_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_node() as node:
        store_append = node.store.append
        down = True

        async def append(event: Event, idempotency_key: str | None = None) -> Appended:
            if down and event.channel == META_CHANNELS:
                raise Unavailable("the store could not commit: disk I/O error")
            return await store_append(event, idempotency_key=idempotency_key)

        node.store.append = append  # type: ignore[method-assign]
        await node.publish(ALICE, Publish(channel=CHANNEL, data="one"))
        await settle()
        assert f"could not announce {CHANNEL} on meta:channels yet" in caplog.text
        with pytest.raises(Unavailable):  # still down: kept for the next try
            await node.retry_announcements()
        down = False
        await node.retry_announcements()
        await node.retry_announcements()  # stored once
        meta = await node.history(ALICE, History(channel=META_CHANNELS, limit=10))
        assert [(m.name, m.data) for m in meta.messages] == [
            ("channel.created", {"channel": CHANNEL})
        ]
