"""Live objects through the SDK: every client's copy equals the server's snapshot; polls
and boards (docs/protocol.md §5)."""

from __future__ import annotations

import asyncio
import random

import httpx
import msgspec
import pytest

from polling import eventually
from roomcast.client import Client, Conflict, LiveCounter, LiveMap, NotFound, connect
from roomcast.protocol.messages import ObjectsSnapshot
from roomcast.testing import ServerProcess


async def server_snapshot(server: ServerProcess, channel: str) -> ObjectsSnapshot:
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get(f"/v1/channels/{channel}/objects")
    assert response.status_code == 200, response.text
    return msgspec.json.decode(response.content, type=ObjectsSnapshot)


async def random_ops(client: Client, channel: str, count: int, seed: int) -> None:
    """``count`` operations on the shared objects, a few at a time (pipelined)."""
    rng = random.Random(seed)
    objects = client.channels.get(channel).objects
    root = await objects.root()
    scores = root.get("scores")
    shared = root.get("shared")
    assert isinstance(scores, LiveCounter) and isinstance(shared, LiveMap)
    done = 0
    while done < count:
        batch = []
        for _ in range(min(5, count - done)):
            kind = rng.randrange(5)
            key = f"k{rng.randrange(8)}"
            if kind == 0:
                batch.append(scores.increment(rng.choice([1, 2, -1])))
            elif kind == 1:
                batch.append(shared.set(key, {"by": client.client_id, "n": rng.randrange(100)}))
            elif kind == 2:
                batch.append(shared.remove(key))
            elif kind == 3:
                batch.append(root.set(key, rng.randrange(1000)))
            else:
                batch.append(objects.create_counter(rng.randrange(10)))
        await asyncio.gather(*batch)
        done += len(batch)


async def test_three_clients_interleave_1000_ops_and_agree_with_the_server(
    server: ServerProcess, channel_name: str
) -> None:
    async with (
        connect(server.url, client_id="alice") as alice,
        connect(server.url, client_id="bob") as bob,
        connect(server.url, client_id="carol") as carol,
    ):
        setup = await alice.channels.get(channel_name).objects.root()
        await setup.set("scores", await alice.channels.get(channel_name).objects.create_counter())
        await setup.set("shared", await alice.channels.get(channel_name).objects.create_map())
        for client in (bob, carol):
            await client.channels.get(channel_name).objects.sync()
        await asyncio.gather(
            random_ops(alice, channel_name, 334, 1),
            random_ops(bob, channel_name, 333, 2),
            random_ops(carol, channel_name, 333, 3),
        )
        expected = await server_snapshot(server, channel_name)
        assert expected.serial == 4 + 1000  # 4 setup ops
        for client in (alice, bob, carol):
            objects = client.channels.get(channel_name).objects
            await eventually(lambda objects=objects: objects.serial == expected.serial)
            assert objects.snapshot() == expected

        async with connect(server.url, client_id="dave") as late:
            objects = late.channels.get(channel_name).objects
            await objects.sync()
            assert objects.snapshot() == expected
            scores = (await objects.root()).get("scores")
            assert isinstance(scores, LiveCounter)
            assert scores.value == expected.objects[scores.object_id].value


async def test_copy_stays_current_across_a_reconnect(
    server: ServerProcess, channel_name: str
) -> None:
    from tcp_proxy import TcpProxy

    from roomcast.client import Backoff

    proxy = await TcpProxy(server.port).start()
    try:
        async with (
            connect(proxy.url, client_id="bob", backoff=Backoff(0.05, 0.5)) as bob,
            connect(server.url, client_id="alice") as alice,
        ):
            bob_objects = bob.channels.get(channel_name).objects
            root = await bob_objects.root()
            counter = await alice.channels.get(channel_name).objects.create_counter(0)
            await (await alice.channels.get(channel_name).objects.root()).set("c", counter)
            await eventually(lambda: "c" in root)
            proxy.cut()  # bob drops; alice goes on while he is away
            for _ in range(20):
                await counter.increment()
            expected = await server_snapshot(server, channel_name)
            await eventually(lambda: bob_objects.serial == expected.serial)
            assert bob_objects.snapshot() == expected
            bob_counter = root.get("c")
            assert isinstance(bob_counter, LiveCounter) and bob_counter.value == 20
    finally:
        await proxy.aclose()


async def test_listeners_hear_changes(server: ServerProcess, channel_name: str) -> None:
    async with (
        connect(server.url, client_id="alice") as alice,
        connect(server.url, client_id="bob") as bob,
    ):
        heard: list[str] = []
        bob_root = await bob.channels.get(channel_name).objects.root()
        bob_root.subscribe(heard.append)
        root = await alice.channels.get(channel_name).objects.root()
        await root.set("plan", "garden")
        await eventually(lambda: bob_root.get("plan") == "garden")
        assert heard == ["root"]


async def test_errors_change_nothing(server: ServerProcess, channel_name: str) -> None:
    async with connect(server.url, client_id="alice") as alice:
        objects = alice.channels.get(channel_name).objects
        root = await objects.root()
        counter = await objects.create_counter(1)
        before = await server_snapshot(server, channel_name)
        with pytest.raises(NotFound):
            await LiveMap(objects, "map-999").set("k", 1)
        with pytest.raises(Conflict):
            await LiveMap(objects, counter.object_id).set("k", 1)
        with pytest.raises(NotFound):
            await root.set("k", {"object_id": "counter-999"})
        assert await server_snapshot(server, channel_name) == before


async def test_polls_one_vote_per_person_and_a_revote_moves_it(
    server: ServerProcess, channel_name: str
) -> None:
    async with (
        connect(server.url, client_id="alice") as alice,
        connect(server.url, client_id="bob") as bob,
    ):
        poll = await alice.channels.get(channel_name).polls.create(
            "Where for lunch?", ["Tacos", "Ramen", "Salad"]
        )
        assert poll.options == {"opt-1": "Tacos", "opt-2": "Ramen", "opt-3": "Salad"}
        assert poll.created_by == "alice" and not poll.closed
        bob_polls = bob.channels.get(channel_name).polls
        await bob_polls.vote(poll.poll_id, "opt-1")
        await bob_polls.vote(poll.poll_id, "opt-2")  # moves bob's vote
        await bob_polls.vote(poll.poll_id, "opt-2")  # the same vote again changes nothing
        await alice.channels.get(channel_name).polls.vote(poll.poll_id, "opt-2")
        alice_polls = alice.channels.get(channel_name).polls
        await eventually(lambda: alice_polls.get(poll.poll_id).counts["opt-2"] == 2)
        assert alice_polls.get(poll.poll_id).counts == {"opt-1": 0, "opt-2": 2, "opt-3": 0}
        assert alice_polls.get(poll.poll_id).votes == {"bob": "opt-2", "alice": "opt-2"}
        with pytest.raises(NotFound):
            await bob_polls.vote(poll.poll_id, "opt-9")
        await bob_polls.unvote(poll.poll_id)
        await alice_polls.close(poll.poll_id)
        await eventually(lambda: bob_polls.get(poll.poll_id).closed)
        with pytest.raises(Conflict):
            await bob_polls.vote(poll.poll_id, "opt-1")
        assert [p.poll_id for p in bob_polls.list()] == [poll.poll_id]
        assert bob_polls.get(poll.poll_id).counts == {"opt-1": 0, "opt-2": 1, "opt-3": 0}
        # The shapes are docs/protocol.md §5's, as the server holds them.
        snapshot = await server_snapshot(server, channel_name)
        root = snapshot.objects["root"].entries
        assert isinstance(root, dict)
        polls_id = root["polls"]["object_id"]
        index = snapshot.objects[polls_id].entries
        assert index == {poll.poll_id: {"object_id": poll.poll_id}}


async def test_boards_keep_items_in_creation_order(
    server: ServerProcess, channel_name: str
) -> None:
    async with (
        connect(server.url, client_id="alice") as alice,
        connect(server.url, client_id="bob") as bob,
    ):
        board = await alice.channels.get(channel_name).boards.create("Garden plan")
        boards = alice.channels.get(channel_name).boards
        first = await boards.add_item(board.board_id, "tomatoes")
        bob_boards = bob.channels.get(channel_name).boards
        await bob.channels.get(channel_name).objects.sync()
        # Creation order is the ids' millisecond: two clients' items made within the same
        # millisecond sort by their random part. Bob's comes a millisecond later at least.
        await asyncio.sleep(0.002)
        second = await bob_boards.add_item(board.board_id, "basil")
        await bob_boards.set_done(board.board_id, first)
        await eventually(lambda: len(boards.get(board.board_id).items) == 2)
        await eventually(
            lambda: any(i.done for i in boards.get(board.board_id).items if i.item_id == first)
        )
        items = boards.get(board.board_id).items
        assert [(i.item_id, i.text, i.author, i.done) for i in items] == [
            (first, "tomatoes", "alice", True),
            (second, "basil", "bob", False),
        ]
        await boards.remove_item(board.board_id, first)
        assert [i.text for i in boards.get(board.board_id).items] == ["basil"]
        assert [b.title for b in bob_boards.list()] == ["Garden plan"]
