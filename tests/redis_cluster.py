"""A Redis Cluster that tests start and stop themselves: three masters on free ports, no
replicas, no persistence (:class:`roomcast.testing.RedisClusterProcesses`). The tests fail,
never skip, when ``redis-server`` or ``redis-cli`` is missing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import ClusterNode, RedisCluster

from roomcast.testing import RedisClusterProcesses


@contextlib.contextmanager
def redis_cluster(
    folder: Path, masters: int = 3, args: list[str] | None = None, replicas: int = 0
) -> Iterator[RedisClusterProcesses]:
    """A started cluster of ``masters`` masters (with ``replicas`` each), stopped after."""
    try:
        cluster = RedisClusterProcesses(folder, masters, args, replicas)
    except FileNotFoundError as exc:
        pytest.fail(f"the Redis Cluster tests need redis-server and redis-cli ({exc})")
    with cluster:
        yield cluster


def cluster_client(cluster: RedisClusterProcesses) -> RedisCluster:
    """A synchronous redis-py client of the cluster (for checks and clean-up)."""
    nodes = [ClusterNode("127.0.0.1", port) for port in cluster.ports]
    return RedisCluster(startup_nodes=nodes, socket_connect_timeout=2)


def drop_cluster_prefix(cluster: RedisClusterProcesses, prefix: str) -> None:
    """Delete every key of a test's prefix, on every master."""
    with contextlib.closing(cluster_client(cluster)) as client:
        for key in list(client.scan_iter(match=f"{prefix}:*", count=1000)):
            client.delete(key)


def masters_of(cluster: RedisClusterProcesses, keys: list[str]) -> set[int]:
    """The ports of the masters that hold ``keys``' slots (``CLUSTER KEYSLOT``)."""
    with contextlib.closing(cluster_client(cluster)) as client:
        found: set[int] = set()
        for key in keys:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
            found.add(int(client.nodes_manager.get_node_from_slot(slot).port))
        return found


__all__ = ["cluster_client", "drop_cluster_prefix", "masters_of", "redis_cluster"]
