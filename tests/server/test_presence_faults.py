"""Presence and resume on ``redis://`` when Redis fails under running nodes: flushed,
restarted empty, down while clients leave, and a node stopped with SIGTERM.

Each test that flushes, stops or restarts Redis runs a ``redis-server`` of its own on a free
port (``tests/redis_servers.py``); the SIGTERM test uses the test Redis with a key prefix of
its own. Without ``redis-server`` or that Redis they fail, they never skip.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from test_mcp import HEADERS, call, mcp_session, open_session, post_message
from test_scale_out import room, store_url  # noqa: F401  (store_url is a fixture)
from test_scale_out_failures import (  # noqa: F401  (private_redis is a fixture)
    node_env,
    private_redis,
    until,
)

from redis_servers import RedisServer
from roomcast.testing import ServerProcess, WireClient

Msg = dict[str, Any]


async def members(node: ServerProcess, channel: str) -> list[tuple[str, Any]]:
    """Who ``node`` says is present on ``channel`` (REST), as (client_id, data)."""
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        reply = await http.get(f"/v1/channels/{channel}/presence")
    assert reply.status_code == 200, reply.text
    return sorted((m["client_id"], m["data"]) for m in reply.json()["items"])


async def present(node: ServerProcess, channel: str, expected: list[tuple[str, Any]]) -> bool:
    return await members(node, channel) == expected


def flush(server: RedisServer) -> None:
    client = server.client()
    client.flushall()
    client.close()


async def test_a_member_entered_after_a_flush_on_a_node_that_dies_still_leaves(
    private_redis: RedisServer,  # noqa: F811
    test_env: dict[str, str],
) -> None:
    # Node a beats every 5 s (its liveness lasts 8 s): alice enters between two beats.
    slow = node_env(test_env, ROOMCAST_HEARTBEAT_S="20", ROOMCAST_PRESENCE_GRACE_S="8")
    a = ServerProcess(store=private_redis.url, env=slow)
    b = ServerProcess(store=private_redis.url, env=node_env(test_env))
    try:
        a.start()
        b.start()
        channel = room()
        watcher = await WireClient.connect(b.ws_url, client_id="watcher")
        await watcher.request("attach", channel=channel)
        flush(private_redis)  # the node registry goes, with everything else
        alice = await WireClient.connect(a.ws_url, client_id="alice")
        # Entered at once, before node a's next heartbeat could register it again.
        await alice.request("presence", channel=channel, op="enter", data="here")
        assert await members(b, channel) == [("alice", "here")]
        a.kill()
        # Node b reaps alice once node a's liveness lapses (8 s after its last beat).
        assert await until(lambda: present(b, channel, []), within=25, every=0.25)
        await watcher.close()
    finally:
        a.close()
        b.close()


async def test_after_a_flush_nodes_put_their_members_back_and_subscribers_attach_again(
    private_redis: RedisServer,  # noqa: F811
    test_env: dict[str, str],
) -> None:
    env = node_env(test_env)
    a, b = (
        ServerProcess(store=private_redis.url, env=env),
        ServerProcess(store=private_redis.url, env=env),
    )
    try:
        a.start()
        b.start()
        quiet, busy = room(), room()  # no event ever on `quiet`
        alice = await WireClient.connect(a.ws_url, client_id="alice")
        bob = await WireClient.connect(b.ws_url, client_id="bob")
        attached = {}
        for client, data in ((alice, "a"), (bob, "b")):
            for channel in (quiet, busy):
                attached[client, channel] = await client.request("attach", channel=channel)
                await client.request("presence", channel=channel, op="enter", data=data)
        await alice.request("publish", channel=busy, data="before")
        flush(private_redis)
        # Both nodes notice, put back what they hold, and close their subscribers (1012)
        # so that they attach again: a channel with no events included.
        for client in (alice, bob):
            await asyncio.wait_for(client.closed.wait(), 15)
            assert client.close_code == 1012
        for channel in (quiet, busy):
            assert await members(a, channel) == [("alice", "a"), ("bob", "b")]
            assert await members(b, channel) == [("alice", "a"), ("bob", "b")]
        # They resume as the same connections, with their presence, and reload.
        back = await WireClient.connect(
            a.ws_url, client_id="alice", resume=alice.connected["resume_key"]
        )
        assert back.connected["resumed"] is True
        again = await back.request(
            "attach",
            channel=busy,
            from_serial=1,
            epoch=attached[alice, busy]["epoch"],
        )
        assert again["resumed"] is False
        assert sorted((m["client_id"], m["data"]) for m in again["presence"]) == [
            ("alice", "a"),
            ("bob", "b"),
        ]
        await back.next(lambda m: m["action"] == "discontinuity")
        # A newcomer sees everyone, on a channel that never had an event too.
        newcomer = await WireClient.connect(b.ws_url, client_id="newcomer")
        fresh = await newcomer.request("attach", channel=quiet)
        assert sorted(m["client_id"] for m in fresh["presence"]) == ["alice", "bob"]
        for client in (back, newcomer):
            await client.close()
        log = a.output() + b.output()
        assert "the store's data was reset" in log, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
    finally:
        a.close()
        b.close()


async def test_after_a_flush_a_node_puts_back_the_members_of_its_mcp_sessions(
    private_redis: RedisServer,  # noqa: F811
    test_env: dict[str, str],
) -> None:
    node = ServerProcess(store=private_redis.url, env=node_env(test_env))
    try:
        node.start()
        channel = room()
        async with mcp_session(node.url, {"X-Roomcast-Client-Id": "visitor"}) as session:
            await call(session, "post_message", room=channel, text="hello")
            assert await members(node, channel) == [("visitor", {"via": "mcp"})]
            flush(private_redis)
            # The node notices at its next tick and puts back what it holds.
            await until(lambda: "the store's data was reset" in node.output(), within=15)
            assert await until(
                lambda: present(node, channel, [("visitor", {"via": "mcp"})]), within=15
            )
        assert await until(lambda: present(node, channel, []), within=15)  # DELETE: it left
        assert "Traceback" not in node.output(), node.output()[-3000:]
    finally:
        node.close()


async def test_after_a_flush_no_node_puts_back_an_mcp_session_ended_on_another(
    private_redis: RedisServer,  # noqa: F811
    test_env: dict[str, str],
) -> None:
    # a holds the session's presence; the DELETE reaches b, which takes the member out of
    # the store. Were a to keep holding it, the flush would have a put it back.
    a = ServerProcess(store=private_redis.url, env=node_env(test_env, ROOMCAST_LOG_LEVEL="info"))
    b = ServerProcess(store=private_redis.url, env=node_env(test_env))
    try:
        a.start()
        b.start()
        channel = room()
        async with httpx.AsyncClient(headers=HEADERS, timeout=30) as http:
            sid = await open_session(http, a)
            await post_message(http, a, sid, channel, "hello")
            assert [data for _, data in await members(b, channel)] == [{"via": "mcp"}]
            ended = await http.delete(f"{b.url}/mcp", headers={"Mcp-Session-Id": sid})
            assert ended.status_code == 200
        assert await until(lambda: present(a, channel, []), within=15)
        await until(lambda: "ended on another node" in a.output(), within=15)
        flush(private_redis)
        await until(lambda: "the store's data was reset" in a.output(), within=15)
        assert "putting back 0 sessions and 0 presence members" in a.output(), a.output()[-3000:]
        assert await members(a, channel) == [] and await members(b, channel) == []
        assert "Traceback" not in a.output() + b.output()
    finally:
        a.close()
        b.close()


async def test_leaves_while_redis_is_down_happen_once_it_is_back(
    tmp_path: Path, test_env: dict[str, str]
) -> None:
    server = RedisServer(tmp_path, persistent=True)  # it comes back with its data
    server.start()
    node = ServerProcess(store=server.url, env=node_env(test_env))
    try:
        node.start()
        channel = room()
        watcher = await WireClient.connect(node.ws_url, client_id="watcher")
        await watcher.request("attach", channel=channel)
        alice = await WireClient.connect(node.ws_url, client_id="alice")
        bob = await WireClient.connect(node.ws_url, client_id="bob")
        for client in (alice, bob):
            await client.request("presence", channel=channel, op="enter", data="hi")
        assert await members(node, channel) == [("alice", "hi"), ("bob", "hi")]
        before = len(node.output())
        server.stop()
        await alice.close()  # a clean close: she leaves at once, if the store could take it
        bob.drop()  # a drop: bob leaves after the 2 s grace
        await asyncio.sleep(4)  # both leaves failed meanwhile
        server.start()
        assert await until(lambda: present(node, channel, []), within=20, every=0.25)
        seen = await watcher.quiet(0.5)
        leaves = sorted(
            m["client_id"] for m in seen if m["action"] == "presence" and m["op"] == "leave"
        )
        assert leaves == ["alice", "bob"], seen
        log = node.output()[before:]
        assert "Traceback" not in log and "Exception in ASGI application" not in log, log
        await watcher.close()
    finally:
        node.close()
        server.stop()


async def test_the_first_attach_after_a_redis_restart_works_on_a_node_with_no_subscriptions(
    private_redis: RedisServer,  # noqa: F811
    test_env: dict[str, str],
) -> None:
    with ServerProcess(store=private_redis.url, env=node_env(test_env)) as node:
        client = await WireClient.connect(node.ws_url, client_id="alice")
        await client.request("attach", channel=room())
        await client.request(
            "detach", channel=(await client.request("attach", channel=room()))["channel"]
        )
        await client.close()
        await asyncio.sleep(0.5)  # the node has no subscription left
        private_redis.stop()
        private_redis.start()
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            assert await until(lambda: _status(http, "/readyz", 200), within=20, every=0.25)
        await asyncio.sleep(12)  # past the idle pub/sub connection's health check interval
        late = await WireClient.connect(node.ws_url, client_id="bob")
        channel = room()
        attached = await late.request("attach", channel=channel)
        assert attached["action"] == "attached", attached
        await late.request("publish", channel=channel, data="hello")
        [event] = await late.events(channel, 1)
        assert event["data"] == "hello"
        await late.close()


async def _status(http: httpx.AsyncClient, path: str, status: int) -> bool:
    return (await http.get(path)).status_code == status


async def test_every_client_of_a_sigterm_node_resumes_on_another(
    store_url: str,  # noqa: F811
    test_env: dict[str, str],
) -> None:
    env = node_env(test_env)
    with ServerProcess(store=store_url, env=env) as a, ServerProcess(store=store_url, env=env) as b:
        channel = room()
        clients = [await WireClient.connect(a.ws_url, client_id=f"c{i}") for i in range(30)]
        for client in clients:
            await client.request("presence", channel=channel, op="enter", data="x")

        async def come_back(client: WireClient) -> WireClient:
            await asyncio.wait_for(client.closed.wait(), 15)  # at once, on the 1012
            return await WireClient.connect(
                b.ws_url,
                client_id=client.connected["client_id"],
                resume=client.connected["resume_key"],
            )

        comebacks = [asyncio.ensure_future(come_back(c)) for c in clients]
        await asyncio.to_thread(a.stop)
        resumed = await asyncio.gather(*comebacks)
        assert [r.connected["resumed"] for r in resumed] == [True] * len(clients)
        assert [r.connected["connection_id"] for r in resumed] == [
            c.connected["connection_id"] for c in clients
        ]
        await asyncio.sleep(7)  # node a's ttl: what it held and was not resumed is reaped
        assert len(await members(b, channel)) == len(clients)
        for r in resumed:
            await r.close()
