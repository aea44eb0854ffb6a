"""Reconnect and resume: no loss, no duplicate, and a visible Discontinuity when the log is new."""

from __future__ import annotations

import asyncio

import pytest
from tcp_proxy import TcpProxy

from polling import eventually
from roomcast.client import Backoff, Discontinuity, Event, StateChange, connect
from roomcast.testing import ServerProcess


async def test_subscriber_gets_2000_events_exactly_once_across_five_server_side_cuts(
    server: ServerProcess, proxy: TcpProxy, channel_name: str, backoff: Backoff
) -> None:
    total, cuts = 2000, 5
    changes: list[str] = []
    async with (
        connect(proxy.url, client_id="reader", backoff=backoff) as reader,
        connect(server.url, client_id="writer") as writer,
    ):
        reader.on("disconnected", lambda c: changes.append(c.event))
        reader.on("resumed", lambda c: changes.append(c.event))
        channel = reader.channels.get(channel_name)
        subscription = await channel.subscribe()
        received: list[Event] = []

        async def consume() -> None:
            async for event in subscription:
                received.append(event)
                if len(received) == total:
                    return

        consumer = asyncio.create_task(consume())
        serial_of: dict[int, int] = {}
        chunk = 20
        cut_every = total // (cuts + 1) // chunk * chunk  # 320: cuts while publishing goes on
        out = writer.channels.get(channel_name)
        for start in range(0, total, chunk):
            if start and start % cut_every == 0 and proxy.cuts < cuts:
                # Cut only a live, attached connection, so each cut really drops one.
                await eventually(lambda: reader.is_connected and channel.state == "attached")
                assert proxy.cut() == 1
            serials = await asyncio.gather(*(out.publish(k) for k in range(start, start + chunk)))
            serial_of.update(zip(range(start, start + chunk), serials, strict=True))
            await asyncio.sleep(0.005)
        await asyncio.wait_for(consumer, 30)

        assert proxy.cuts == cuts
        assert sorted(serial_of.values()) == list(range(1, total + 1))
        assert [e.serial for e in received] == list(range(1, total + 1))
        by_serial = {serial: k for k, serial in serial_of.items()}
        assert [e.data for e in received] == [by_serial[s] for s in range(1, total + 1)]
        await asyncio.sleep(0.3)
        assert subscription.pending == 0  # nothing after the last one: no duplicate
        assert changes == ["disconnected", "resumed"] * cuts


async def test_publishes_in_flight_across_cuts_are_stored_exactly_once(
    server: ServerProcess, proxy: TcpProxy, channel_name: str, backoff: Backoff
) -> None:
    total = 600
    async with (
        connect(proxy.url, client_id="writer", backoff=backoff) as writer,
        connect(server.url, client_id="reader") as reader,
    ):
        out = writer.channels.get(channel_name)

        async def cut_while_publishing() -> None:
            for _ in range(3):
                await asyncio.sleep(0.15)
                await eventually(lambda: writer.is_connected)
                proxy.cut()

        cutter = asyncio.create_task(cut_while_publishing())
        serials = await asyncio.gather(*(out.publish({"k": k}) for k in range(total)))
        await cutter
        assert proxy.cuts == 3
        assert len(set(serials)) == total
        messages = [
            message
            async for page in reader.channels.get(channel_name).history(
                limit=1000, direction="forwards"
            )
            for message in page.messages
        ]
        assert sorted(m.data["k"] for m in messages) == list(range(total))
        assert [m.msg_serial for m in messages] == sorted(serials)
        assert all(m.id is not None and m.id.startswith("rc-") for m in messages)


async def test_a_publish_with_your_id_is_resent_with_that_id(
    server: ServerProcess, proxy: TcpProxy, channel_name: str, backoff: Backoff
) -> None:
    async with connect(proxy.url, client_id="writer", backoff=backoff) as writer:
        out = writer.channels.get(channel_name)
        first = await out.publish("once", id="order-42")
        proxy.cut()
        again = await out.publish("twice", id="order-42")  # sent after the reconnect
        assert again == first
        [page] = [page async for page in out.history()]
        assert [(m.id, m.data) for m in page.messages] == [("order-42", "once")]


async def test_a_new_epoch_raises_discontinuity_then_the_channel_goes_on(
    test_env: dict[str, str], channel_name: str, backoff: Backoff
) -> None:
    server = ServerProcess(store="memory://", env=test_env).start()
    try:
        async with (
            connect(server.url, client_id="reader", backoff=backoff) as reader,
            connect(server.url, client_id="writer", backoff=backoff) as writer,
        ):
            changes: list[StateChange] = []
            reader.on("connected", changes.append)
            reader.on("resumed", changes.append)
            channel = reader.channels.get(channel_name)
            subscription = await channel.subscribe()
            out = writer.channels.get(channel_name)
            assert await out.publish("before") == 1
            before = await anext(subscription)
            assert (before.serial, before.data) == (1, "before")
            old_epoch = channel.epoch

            server.stop()
            server.start()  # same port, empty memory store: a new epoch

            with pytest.raises(Discontinuity) as gap:
                await asyncio.wait_for(anext(subscription), 15)
            assert gap.value.channel == channel_name
            assert "epoch" in gap.value.reason
            assert gap.value.epoch is not None and gap.value.epoch != old_epoch
            assert gap.value.epoch == channel.epoch
            assert gap.value.serial == 0
            # The server forgot the session: a new connection, not a resumed one.
            assert [c.event for c in changes] == ["connected"]

            # The subscription goes on from the new snapshot.
            assert await out.publish("after") == 1
            after = await asyncio.wait_for(anext(subscription), 10)
            assert (after.serial, after.data) == (1, "after")
    finally:
        server.close()


async def test_presence_survives_a_cut_and_is_entered_again_after_a_restart(
    test_env: dict[str, str], channel_name: str, backoff: Backoff
) -> None:
    server = ServerProcess(store="memory://", env=test_env).start()
    proxy = await TcpProxy(server.port).start()
    try:
        async with (
            connect(proxy.url, client_id="alice", backoff=backoff) as alice,
            connect(server.url, client_id="bob", backoff=backoff) as bob,
        ):
            mine = alice.channels.get(channel_name)
            await mine.presence.enter({"mood": "hungry"})
            watched = bob.channels.get(channel_name)
            [member] = await watched.presence.members()
            assert (member.client_id, member.data) == ("alice", {"mood": "hungry"})
            connection_id = alice.connection_id

            proxy.cut()  # resumed: same connection id, still a member, no leave seen
            await eventually(lambda: alice.is_connected)
            assert alice.connection_id == connection_id
            await asyncio.sleep(2.5)  # past the 2 s grace period
            assert [m.client_id for m in await watched.presence.members()] == ["alice"]

            fresh: list[str] = []
            alice.on("connected", lambda c: fresh.append("alice"))
            bob.on("connected", lambda c: fresh.append("bob"))
            server.stop()
            server.start()  # the new server knows nobody: alice enters again by herself
            await eventually(lambda: sorted(fresh) == ["alice", "bob"])
            assert alice.connection_id != connection_id

            async def alice_is_back() -> bool:
                members = await watched.presence.members()
                return [(m.client_id, m.connection_id) for m in members] == [
                    ("alice", alice.connection_id)
                ]

            await eventually(alice_is_back)
            [member] = await watched.presence.members()
            assert member.data == {"mood": "hungry"}
    finally:
        await proxy.aclose()
        server.close()
