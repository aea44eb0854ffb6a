"""A Redis Sentinel setup that tests start and stop themselves, on free ports: a primary, a
replica and three Sentinels (quorum 2) watching them as one service, none of them persistent.

The Sentinels are configured to act fast (``down-after-milliseconds`` 1000,
``failover-timeout`` 5000), so that a test can force a failover (``SENTINEL FAILOVER``) or
kill the primary and see the replica promoted within seconds.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from redis_servers import RedisServer
from roomcast.testing import free_port

SERVICE = "roomcast"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def _wait(check: Callable[[], object], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


class SentinelProcess:
    """One ``redis-server --sentinel`` on a free port, with a config file of its own (Sentinel
    rewrites it as it learns about the service)."""

    def __init__(self, folder: Path, password: str | None, own_password: str | None) -> None:
        exe = shutil.which("redis-sentinel") or shutil.which("redis-server")
        if exe is None:
            pytest.fail("these tests need redis-server (or redis-sentinel) on the PATH")
        self.exe = exe
        self.folder = folder
        self.port = free_port()
        self.id = secrets.token_hex(20)
        self.password = password
        self.own_password = own_password
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, primary: int, replicas: list[int], others: list[SentinelProcess]) -> None:
        """Start watching the primary on port ``primary``; told of its replicas and of the
        other Sentinels up front, so that it needs not wait to discover them."""
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "sentinel.conf"
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f'dir "{self.folder}"',
            f"sentinel myid {self.id}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2",
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {SERVICE} 1",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {SERVICE} {self.password}")
        if self.own_password:  # the Sentinels' own, which they also use with each other
            lines += [
                f"requirepass {self.own_password}",
                f"sentinel sentinel-pass {self.own_password}",
            ]
        lines += [f"sentinel known-replica {SERVICE} 127.0.0.1 {port}" for port in replicas]
        lines += [f"sentinel known-sentinel {SERVICE} 127.0.0.1 {o.port} {o.id}" for o in others]
        conf.write_text("\n".join(lines) + "\n")
        cmd = [self.exe, str(conf)]
        if not self.exe.endswith("redis-sentinel"):
            cmd.append("--sentinel")
        log = (self.folder / "sentinel.log").open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _wait(self._answering, f"the Sentinel on port {self.port}", 10)

    def _answering(self) -> bool:
        """This Sentinel answers on its port (not another process there: it would have
        failed to listen and exited)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = (self.folder / "sentinel.log").read_text(errors="replace")
            raise RuntimeError(f"the Sentinel on port {self.port} exited:\n{log[-2000:]}")
        with contextlib.closing(self.client()) as client:
            return bool(client.info("server")["process_id"] == self.proc.pid)

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, password=self.own_password, socket_connect_timeout=2, socket_timeout=5
        )

    def master(self) -> dict[str, Any]:
        """What this Sentinel knows of the primary (``SENTINEL MASTER``)."""
        with contextlib.closing(self.client()) as client:
            state: dict[str, Any] = client.sentinel_master(SERVICE)
            return state

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class SentinelSetup:
    """A primary, a replica and three Sentinels watching them (quorum 2), on free ports.

    Args:
        folder: Where each process keeps its files (one folder each).
        password: The Redis password (``requirepass`` and ``masterauth`` on both servers;
            the Sentinels use it to reach them).
        sentinel_password: The Sentinels' own password (none by default).
        min_replicas: ``min-replicas-to-write`` on both servers (0: off).
    """

    def __init__(
        self,
        folder: Path,
        password: str | None = None,
        sentinel_password: str | None = None,
        min_replicas: int = 0,
    ) -> None:
        self.password = password
        self.sentinel_password = sentinel_password
        self.min_replicas = min_replicas
        self.servers = [RedisServer(folder / name, password) for name in ("a", "b")]
        self.sentinels = [
            SentinelProcess(folder / f"sentinel{i}", password, sentinel_password) for i in range(3)
        ]

    def url(self, prefix: str | None = None, db: int = 0) -> str:
        """The ``redis+sentinel://`` store URL of the service."""
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        params = {"prefix": prefix, "sentinel_password": self.sentinel_password}
        query = "&".join(f"{k}={v}" for k, v in params.items() if v)
        query = f"?{query}" if query else ""
        return f"redis+sentinel://{auth}{hosts}/{SERVICE}/{db}{query}"

    def start(self) -> SentinelSetup:
        primary, replica = self.servers
        for server in self.servers:
            server.folder.mkdir(parents=True, exist_ok=True)
            server.start()
            with contextlib.closing(server.client()) as client:
                if self.password:
                    client.config_set("masterauth", self.password)
                # A replica that has to sync in full starts at once (the default waits 5 s
                # for more replicas to share the transfer).
                client.config_set("repl-diskless-sync-delay", 0)
                if self.min_replicas:
                    client.config_set("min-replicas-to-write", self.min_replicas)
                    client.config_set("min-replicas-max-lag", 10)
        with contextlib.closing(replica.client()) as client:
            client.replicaof("127.0.0.1", primary.port)
        self.wait_in_sync()
        for sentinel in self.sentinels:
            others = [o for o in self.sentinels if o is not sentinel]
            sentinel.start(primary.port, [replica.port], others)
        _wait(self._sentinels_ready, "the Sentinels to see each other and the replica")
        return self

    def _sentinels_ready(self) -> bool:
        """Every Sentinel is connected to the other two and has the replica's state (so it
        can pick it in a failover)."""
        for sentinel in self.sentinels:
            with contextlib.closing(sentinel.client()) as client:
                peers = client.sentinel_sentinels(SERVICE)
                replicas = client.sentinel_slaves(SERVICE)
            if len(peers) != 2 or any(p["is_disconnected"] or p["is_sdown"] for p in peers):
                return False
            if len(replicas) != 1 or replicas[0]["master-link-status"] != "ok":
                return False
            if replicas[0]["is_disconnected"] or replicas[0]["is_sdown"]:
                return False
        return True

    def primary(self) -> RedisServer:
        """The server that the Sentinels name as the primary now."""
        port = int(self.sentinels[0].master()["port"])
        return next(s for s in self.servers if s.port == port)

    def replica(self) -> RedisServer:
        primary = self.primary()
        return next(s for s in self.servers if s is not primary)

    def wait_in_sync(self, within: float = 30.0) -> None:
        """Until the replica is connected to the primary and has all that it wrote."""

        def in_sync() -> bool:
            primary = self.primary_now()
            replica = next(s for s in self.servers if s is not primary)
            with (
                contextlib.closing(primary.client()) as p,
                contextlib.closing(replica.client()) as r,
            ):
                offset = p.info("replication")["master_repl_offset"]
                info = r.info("replication")
                return bool(
                    info.get("master_link_status") == "up"
                    and info.get("slave_repl_offset") == offset
                )

        _wait(in_sync, "the replica to sync", within)

    def primary_now(self) -> RedisServer:
        """The server that says it is a primary (by ROLE, not by the Sentinels)."""
        for server in self.servers:
            with contextlib.closing(server.client()) as client:
                if client.execute_command("ROLE")[0] == b"master":
                    return server
        raise redis.ConnectionError("no server says it is a primary")

    def failover(self) -> None:
        """``SENTINEL FAILOVER``: promote the replica now, without waiting for a fault."""
        with contextlib.closing(self.sentinels[0].client()) as client:
            client.execute_command("SENTINEL", "FAILOVER", SERVICE)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()


@contextlib.contextmanager
def sentinel_setup(
    folder: Path,
    password: str | None = None,
    sentinel_password: str | None = None,
    min_replicas: int = 0,
) -> Iterator[SentinelSetup]:
    """A started :class:`SentinelSetup`, stopped after."""
    setup = SentinelSetup(folder, password, sentinel_password, min_replicas)
    try:
        yield setup.start()
    finally:
        setup.stop()
