"""Two ``roomcast serve`` nodes on a Redis Sentinel service (``--store redis+sentinel://``)
through a failover (``SENTINEL FAILOVER``) while clients publish on both: the nodes follow the
new primary, refuse writes (50300) and report unready only while writes fail, and lose
nothing that they acknowledged.

The test starts its own servers (a primary, a replica and three Sentinels, from
``tests/redis_sentinel.py``); without ``redis-server`` it fails, it never skips.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx
from test_scale_out import room
from test_scale_out_failures import until

from redis_sentinel import sentinel_setup
from redis_servers import RedisServer
from roomcast.testing import ServerProcess, WireClient

Msg = dict[str, Any]

# Once the new primary takes writes, every node's writes succeed within this (docs/deploy.md:
# a node follows within about a second of the Sentinels' switch, long before then).
FOLLOW_WITHIN_S = 2.0


def takes_writes(server: RedisServer) -> bool:
    with contextlib.closing(server.client()) as client:
        try:
            return bool(client.set("probe", "1", px=1000))
        except Exception:
            return False


def shard_subscribers(server: RedisServer) -> int:
    with contextlib.closing(server.client()) as client:
        return sum(1 for c in client.client_list() if int(c.get("ssub", 0)) > 0)


class Node:
    """A node, a client publishing on it and what happened: (time answered, acknowledged)
    per publish and (time asked, time answered, /readyz status) per probe."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.publishes: list[tuple[float, bool]] = []
        self.readiness: list[tuple[float, float, int]] = []

    def acked_since(self, moment: float) -> int:
        return sum(1 for t, ok in self.publishes if ok and t > moment)

    async def publish(
        self, client: WireClient, channel: str, tag: str, acked: dict[str, int], stop: asyncio.Event
    ) -> None:
        """Publish until ``stop``, each message with an ``id``: one refused (50300) is sent
        again with the same id until it is acknowledged."""
        loop = asyncio.get_running_loop()
        n = 0
        while not stop.is_set():
            key = f"{tag}{n}"
            reply = await client.request("publish", channel=channel, data=key, id=key, timeout=30)
            if reply["action"] == "ok":
                acked[key] = reply["serial"]
                n += 1
            else:
                assert (reply["action"], reply["code"]) == ("error", 50300), reply
            self.publishes.append((loop.time(), reply["action"] == "ok"))
            await asyncio.sleep(0.02)

    async def probe(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(base_url=self.server.url, timeout=30) as http:
            while not stop.is_set():
                asked = loop.time()
                status = (await http.get("/readyz")).status_code
                self.readiness.append((asked, loop.time(), status))
                await asyncio.sleep(0.05)


async def test_nodes_follow_a_failover_and_lose_nothing_acknowledged(
    tmp_path: Path, test_env: dict[str, str]
) -> None:
    # The servers refuse writes while they have no replica (min-replicas-to-write 1), as
    # docs/deploy.md recommends: the old primary refuses writes as soon as its replica is
    # promoted away, instead of taking writes that the failover then drops.
    with sentinel_setup(tmp_path / "redis", min_replicas=1) as setup:
        env = {**test_env, "ROOMCAST_HEARTBEAT_S": "1"}
        servers = [ServerProcess(store=setup.url(), env=env) for _ in range(2)]
        try:
            for server in servers:
                server.start()
            await _publish_through_a_failover(setup, [Node(s) for s in servers])
        finally:
            for server in servers:
                server.close()


async def _publish_through_a_failover(setup: Any, nodes: list[Node]) -> None:
    loop = asyncio.get_running_loop()
    channel = room()
    subscribers = []
    for i, node in enumerate(nodes):
        subscriber = await WireClient.connect(node.server.ws_url, client_id=f"sub{i}")
        await subscriber.request("attach", channel=channel)
        subscribers.append(subscriber)
    publishers = [
        await WireClient.connect(node.server.ws_url, client_id=f"pub{i}")
        for i, node in enumerate(nodes)
    ]
    acked: dict[str, int] = {}  # publish id (and data) → its serial
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(node.publish(client, channel, f"n{i}-", acked, stop))
        for i, (node, client) in enumerate(zip(nodes, publishers, strict=True))
    ] + [asyncio.create_task(node.probe(stop)) for node in nodes]
    try:
        await until(lambda: all(node.acked_since(0) >= 20 for node in nodes), within=20, every=0.05)
        old, new = setup.primary(), setup.replica()
        assert shard_subscribers(old) == 2  # each node's bus
        # A planned failover that loses nothing (docs/deploy.md): writes paused on the
        # primary until the replica has everything, then SENTINEL FAILOVER. Without the
        # pause, a write acknowledged in the microseconds before the replica is promoted
        # may not have reached it (replication is asynchronous).
        paused_at = loop.time()
        with contextlib.closing(old.client()) as client:
            client.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
        setup.wait_in_sync()
        failed_over_at = loop.time()
        setup.failover()
        writable_at = await until(lambda: takes_writes(new) and loop.time(), within=60, every=0.05)
        await until(lambda: all(node.acked_since(writable_at) >= 20 for node in nodes), 20, 0.05)
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    # The nodes' bus follows the new primary (the old one turned into its replica).
    await until(lambda: shard_subscribers(new) == 2, within=10, every=0.05)
    for i, node in enumerate(nodes):
        before = [ok for t, ok in node.publishes if t < failed_over_at]
        after = [(t, ok) for t, ok in node.publishes if t > failed_over_at]
        assert all(before), f"node {i}: a write failed before the failover"
        assert not all(ok for _, ok in after), f"node {i}: no write failed in the failover"
        # Writes succeed again on every node within FOLLOW_WITHIN_S of the new primary
        # taking them, and keep succeeding.
        resumed = min(t for t, ok in after if ok and t > writable_at)
        assert resumed - writable_at < FOLLOW_WITHIN_S, (i, resumed - writable_at)
        assert all(ok for t, ok in after if t > resumed), f"node {i}: failed after resuming"
        # /readyz said 503 during the failover, only while writes failed (paused, then
        # refused), and 200 after.
        unready = [(asked, answered) for asked, answered, ok in node.readiness if ok != 200]
        assert unready, f"node {i}: /readyz never said 503"
        assert {status for _, _, status in node.readiness} == {200, 503}
        for asked, answered in unready:
            assert paused_at < answered and asked < resumed, (i, asked, answered, resumed)
        assert all(ok == 200 for asked, _, ok in node.readiness if asked > resumed), i

    # Nothing acknowledged is lost: every acknowledged message is in the log at its serial,
    # once; the log is gap-free; the subscribers of both nodes saw all of it live, in order.
    last = max(acked.values())
    reader = await WireClient.connect(nodes[1].server.ws_url, client_id="reader")
    attached = await reader.request("attach", channel=channel, from_serial=0)
    assert attached["serial"] == last
    log = await reader.events(channel, last, timeout=30)
    assert [e["serial"] for e in log] == list(range(1, last + 1))
    by_data = {e["data"]: e["serial"] for e in log}
    assert len(by_data) == last  # no message twice (a retried publish keeps its id)
    lost = {key: serial for key, serial in acked.items() if by_data.get(key) != serial}
    assert not lost, lost
    for subscriber in subscribers:
        live = await subscriber.events(channel, last, timeout=30)
        assert [(e["serial"], e["data"]) for e in live] == [(e["serial"], e["data"]) for e in log]
        assert subscriber.close_code is None
    for client in [*subscribers, *publishers, reader]:
        await client.close()
