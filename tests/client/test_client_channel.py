"""Channels through the SDK: publish, subscribe (iterator and callback), history, attach."""

from __future__ import annotations

import asyncio

import pytest
from tcp_proxy import TcpProxy

from polling import eventually
from roomcast.client import (
    Backoff,
    BadRequest,
    Client,
    Event,
    HistoryPage,
    TooLarge,
    connect,
)
from roomcast.protocol.messages import EVENT_TYPES
from roomcast.testing import ServerProcess


async def test_publish_returns_the_serial_and_a_subscriber_gets_the_event(
    server: ServerProcess, channel_name: str
) -> None:
    async with (
        connect(server.url, client_id="alice") as alice,
        connect(server.ws_url, client_id="bob") as bob,
    ):
        subscription = await bob.channels.get(channel_name).subscribe()
        lunch = alice.channels.get(channel_name)
        assert await lunch.publish("tacos?") == 1
        assert await lunch.publish({"vote": "yes"}, name="vote", extras={"reply_to": 1}) == 2
        assert await lunch.publish(None) == 3
        first, second, third = [await anext(subscription) for _ in range(3)]
        assert isinstance(first, Event)
        assert (first.serial, first.type, first.client_id, first.data) == (
            1,
            "create",
            "alice",
            "tacos?",
        )
        assert first.name == "text"
        assert (second.name, second.data, second.extras) == (
            "vote",
            {"vote": "yes"},
            {"reply_to": 1},
        )
        assert third.data is None


async def test_iteration_attaches_on_first_use_and_sees_only_later_events(
    server: ServerProcess, channel_name: str
) -> None:
    async with connect(server.url, client_id="alice") as alice:
        channel = alice.channels.get(channel_name)
        await channel.publish("old")
        subscription = channel.subscribe()
        assert channel.state == "initialized"

        async def first() -> Event:
            async for event in subscription:
                return event
            raise AssertionError("ended")

        task = asyncio.create_task(first())
        await eventually(lambda: channel.state == "attached")
        assert channel.serial == 1
        await channel.publish("new")
        event = await asyncio.wait_for(task, 5)
        assert (event.serial, event.data) == (2, "new")


async def test_callback_subscription_gets_events_in_order(
    server: ServerProcess, channel_name: str
) -> None:
    seen: list[object] = []
    done = asyncio.Event()

    async def on_event(event: Event) -> None:
        await asyncio.sleep(0)  # async callbacks are awaited one at a time
        seen.append(event.data)
        if len(seen) == 50:
            done.set()

    async with connect(server.url, client_id="alice") as alice:
        channel = alice.channels.get(channel_name)
        plain: list[object] = []
        await channel.subscribe(on_event)
        await channel.subscribe(lambda event: plain.append(event.data))
        await asyncio.gather(*(channel.publish(k) for k in range(50)))
        await asyncio.wait_for(done.wait(), 5)
        assert seen == list(range(50))
        assert plain == list(range(50))


async def test_a_failing_callback_does_not_stop_the_subscription(
    server: ServerProcess, channel_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[object] = []

    def on_event(event: Event) -> None:
        if event.data == 0:
            raise ValueError("boom")
        seen.append(event.data)

    async with connect(server.url, client_id="alice") as alice:
        channel = alice.channels.get(channel_name)
        await channel.subscribe(on_event)
        for k in range(3):
            await channel.publish(k)
        await eventually(lambda: len(seen) == 2)
        assert seen == [1, 2]
        assert "subscriber callback failed" in caplog.text


async def test_history_pages_backwards_and_forwards(
    server: ServerProcess, channel_name: str
) -> None:
    async with connect(server.url, client_id="alice") as alice:
        channel = alice.channels.get(channel_name)
        for k in range(25):
            await channel.publish(k)
        pages = [page async for page in channel.history(limit=10)]
        assert all(isinstance(p, HistoryPage) for p in pages)
        assert [[m.data for m in p.messages] for p in pages] == [
            list(range(15, 25)),
            list(range(5, 15)),
            list(range(5)),
        ]
        assert [p.has_more for p in pages] == [True, True, False]
        forwards = [page async for page in channel.history(limit=10, direction="forwards")]
        assert [[m.msg_serial for m in p.messages] for p in forwards] == [
            list(range(1, 11)),
            list(range(11, 21)),
            list(range(21, 26)),
        ]
        [tail] = [p async for p in channel.history(limit=100, direction="forwards", start=20)]
        assert [m.data for m in tail.messages] == [20, 21, 22, 23, 24]
        empty = [p async for p in alice.channels.get(channel_name + "-empty").history()]
        assert [(p.messages, p.has_more) for p in empty] == [([], False)]


async def test_attach_with_rewind_and_from_serial(server: ServerProcess, channel_name: str) -> None:
    async with connect(server.url, client_id="alice") as alice:
        writer = alice.channels.get(channel_name)
        for k in range(10):
            await writer.publish(k)
        async with connect(server.url, client_id="late") as late:
            channel = late.channels.get(channel_name)
            subscription = channel.subscribe()
            attached = await channel.attach(rewind=3)
            assert attached.serial == 10
            assert [m.data for m in attached.messages or []] == [7, 8, 9]
            # Kept without them: they would go stale there, and hold memory.
            assert channel.attached is not None and channel.attached.serial == 10
            assert not channel.attached.messages and not (await channel.attach()).messages
            await writer.publish("live")
            assert (await anext(subscription)).data == "live"

        async with connect(server.url, client_id="replayer") as replayer:
            channel = replayer.channels.get(channel_name)
            subscription = channel.subscribe()
            attached = await channel.attach(from_serial=8)
            assert attached.resumed is True
            replayed = [await anext(subscription) for _ in range(3)]
            assert [e.serial for e in replayed] == [9, 10, 11]


async def test_detach_ends_iteration_and_stops_events(
    server: ServerProcess, channel_name: str
) -> None:
    async with connect(server.url, client_id="alice") as alice:
        channel = alice.channels.get(channel_name)
        subscription = await channel.subscribe()
        await channel.publish(1)
        assert (await anext(subscription)).data == 1
        await channel.detach()
        assert channel.state == "detached"
        with pytest.raises(StopAsyncIteration):
            await anext(subscription)
        await channel.publish(2)
        again = await channel.subscribe()  # attaches again, from the latest serial
        await channel.publish(3)
        assert (await anext(again)).data == 3


async def test_closing_a_subscription_keeps_the_others(
    server: ServerProcess, channel_name: str
) -> None:
    async with connect(server.url, client_id="alice") as alice:
        channel = alice.channels.get(channel_name)
        async with channel.subscribe() as first:
            second = await channel.subscribe()
            await first.aclose()
            await channel.publish("x")
            assert (await anext(second)).data == "x"
            with pytest.raises(StopAsyncIteration):
                await anext(first)
        assert channel.state == "attached"


async def test_error_replies_raise_the_typed_error(
    server: ServerProcess, channel_name: str
) -> None:
    async with connect(server.url, client_id="alice") as alice:
        channel = alice.channels.get(channel_name)
        with pytest.raises(TooLarge) as too_large:
            await channel.publish("x" * 70_000)
        assert too_large.value.code == 41300
        with pytest.raises(BadRequest):
            await channel.publish("x", name="")
        assert await channel.publish("still fine") == 1  # the connection is still usable
        with pytest.raises(BadRequest):
            alice.channels.get("no spaces allowed")


async def test_channels_are_one_object_per_name(server: ServerProcess, channel_name: str) -> None:
    client: Client
    async with connect(server.url) as client:
        assert client.channels.get(channel_name) is client.channels.get(channel_name)
        assert channel_name in client.channels and len(client.channels) == 1
        assert client.client_id is not None and client.client_id.startswith("anon-")


async def test_claim_is_granted_to_one_connection_and_renewed_by_it(
    test_env: dict[str, str], channel_name: str
) -> None:
    key = "workers:" + "w" * 32  # answer: claims are for key holders (agent workers)
    with ServerProcess(store="memory://", env={**test_env, "ROOMCAST_KEYS": key}) as server:
        await _claims_of_two_workers(server, key, channel_name)


async def _claims_of_two_workers(server: ServerProcess, key: str, channel_name: str) -> None:
    async with (
        connect(server.url, key=key, client_id="worker") as first,
        connect(server.url, key=key, client_id="worker") as second,
    ):
        mine = first.channels.get(channel_name)
        theirs = second.channels.get(channel_name)
        assert await mine.claim("answer:1", ttl_s=30) is True
        assert await theirs.claim("answer:1", ttl_s=30) is False
        assert await mine.claim("answer:1", ttl_s=30) is True  # a renewal
        assert await theirs.claim("answer:2", ttl_s=30) is True
        with pytest.raises(BadRequest):
            await mine.claim("answer:3", ttl_s=0)


async def test_types_hold_across_a_reconnect_and_all_types_receive_everything_again(
    server: ServerProcess, channel_name: str
) -> None:
    proxy = await TcpProxy(server.port).start()
    try:
        async with (
            connect(proxy.url, client_id="bot", backoff=Backoff(0.05, 0.5)) as bot,
            connect(server.url, client_id="alice") as alice,
        ):
            seen: list[tuple[int, str]] = []
            watched = bot.channels.get(channel_name)
            watched.subscribe(lambda event: seen.append((event.serial, event.type)))
            await watched.attach(types=["create", "update"])
            assert watched.types == {"create", "update"}
            async with alice.channels.get(channel_name).stream() as answer:
                await answer.append("one ")
                await eventually(lambda: seen == [(1, "create")])
                proxy.cut()  # the bot drops while the answer streams; it resumes
                await answer.append("two")
            await eventually(lambda: len(seen) == 2)
            assert seen[1][1] == "update" and watched.serial == seen[1][0]
            await watched.attach(types=EVENT_TYPES)
            assert watched.types is None
            async with alice.channels.get(channel_name).stream() as answer:
                await answer.append("three")
            await eventually(lambda: [t for _, t in seen[2:]] == ["create", "append", "update"])
    finally:
        await proxy.aclose()
