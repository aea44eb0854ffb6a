"""Helpers for testing against a real roomcast server: run one in a subprocess, and talk to
it with a raw protocol client. roomcast's own tests use them; so can yours.

Example::

    with ServerProcess(env={"ROOMCAST_PUBLISH_RATE": "0"}) as server:
        async with await WireClient.connect(server.ws_url, client_id="alice") as alice:
            await alice.request("attach", channel="room:a")
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

Msg = dict[str, Any]


_GIVEN: set[int] = set()  # the ports free_port() handed out in this process


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, never one this process was given
    before: several ports are often picked before any is bound (a Redis primary, its
    replica, three Sentinels), and the system may offer the same free port twice."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


class ServerProcess:
    """``roomcast serve`` in a subprocess on a free port, with its own SQLite file by default.

    Every instance started is kept in :meth:`tracked` until :meth:`untrack`, with its log
    (also after :meth:`close`), so a test harness can read what each server wrote while a
    test ran: :meth:`log_size` before, ``output(since=...)`` after.
    """

    _tracked: ClassVar[list[ServerProcess]] = []

    def __init__(
        self,
        store: str | None = None,
        env: Mapping[str, str] | None = None,
        args: list[str] | None = None,
        port: int | None = None,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if store is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="roomcast-test-")
            store = f"sqlite:///{Path(self._tmp.name) / 'roomcast.db'}"
        self.store = store
        self.port = port or free_port()
        self.env = dict(env or {})
        self.args = list(args or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="roomcast-server-", suffix=".log")[1])
        self._closed_log: bytes | None = None  # the log as it was at close()

    @classmethod
    def tracked(cls) -> list[ServerProcess]:
        """The instances started in this process and not untracked, oldest first."""
        return list(cls._tracked)

    def untrack(self) -> None:
        """Leave :meth:`tracked` (and, once closed, drop the copy of the log)."""
        if self in ServerProcess._tracked:
            ServerProcess._tracked.remove(self)
        self._closed_log = None

    @property
    def closed(self) -> bool:
        """:meth:`close` was called: the server writes nothing more."""
        return self._closed_log is not None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def command(self) -> list[str]:
        """What :meth:`start` runs."""
        cmd = [sys.executable, "-m", "roomcast", "serve", "--host", "127.0.0.1"]
        return [*cmd, "--port", str(self.port), "--store", self.store, *self.args]

    def spawn(self) -> None:
        """Run :meth:`command`, its output appended to the log, and track it."""
        # faulthandler: a process that will not stop is sent SIGABRT, which writes where each
        # of its threads stands into its log before it dies (see stop()).
        env = {**os.environ, "PYTHONFAULTHANDLER": "1", **self.env}
        if self not in ServerProcess._tracked:
            ServerProcess._tracked.append(self)
        self._closed_log = None
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(), env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def start(self, timeout: float = 20.0) -> ServerProcess:
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"server not ready in {timeout}s:\n{self.output()}")

    def output(self, since: int = 0) -> str:
        """What the server wrote, from byte offset ``since`` (a :meth:`log_size`) on."""
        return self._log_bytes(since).decode(errors="replace")

    def log_size(self) -> int:
        """The length of the log in bytes so far."""
        if self._closed_log is not None:
            return len(self._closed_log)
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_bytes(self, since: int = 0) -> bytes:
        if self._closed_log is not None:
            return self._closed_log[since:]
        try:
            with self.log_path.open("rb") as log:
                log.seek(since)
                return log.read()
        except FileNotFoundError:
            return b""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Stop the server with ``sig`` and wait; returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._abort_and_report(sig, timeout)
        code = self.proc.returncode
        self.proc = None
        return code

    def log_tasks(self, wait_s: float = 0.5) -> None:
        """Have a running server log where each of its tasks stands (SIGUSR1), and give it
        ``wait_s`` to write it: for a test that failed while the server seemed stuck."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(wait_s)

    def _abort_and_report(self, sig: int, timeout: float) -> None:
        """A server that did not stop: SIGUSR1 makes it log its tasks' stacks and SIGABRT
        its threads', then its log's end goes to stderr, where a failing test's report
        shows it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)  # the server logs where its tasks stand
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(1)
        self.proc.send_signal(signal.SIGABRT)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        tail = "\n".join(self.output().splitlines()[-150:])
        name = signal.Signals(sig).name
        print(
            f"the server did not stop within {timeout:g} s of {name}; its log ends:",
            file=sys.stderr,
        )
        print(tail, file=sys.stderr)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        if self in ServerProcess._tracked and self._closed_log is None:
            self._closed_log = self._log_bytes()
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class AgentsProcess(ServerProcess):
    """``roomcast agents`` in a subprocess, a worker of the server at ``server_url`` with the
    API key ``key``. Tracked like a :class:`ServerProcess` (its log is read the same way);
    :meth:`start` returns once it runs, :meth:`logged` waits for a line of its log."""

    def __init__(
        self,
        server_url: str,
        agents: Path,
        key: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(store="memory://", env=env)
        self.server_url = server_url
        self.agents = agents
        self.key = key

    @property
    def url(self) -> str:
        """What names it in a report: the server it works for."""
        return f"agents worker of {self.server_url}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "roomcast", "agents", "--agents", str(self.agents)]
        return [*cmd, "--server", self.server_url, "--key", self.key]

    def start(self, timeout: float = 20.0) -> AgentsProcess:
        self.spawn()
        return self

    async def logged(self, text: str, within: float = 60.0) -> None:
        """Until ``text`` is in the log (an AssertionError with the log if the worker exits
        first, TimeoutError after ``within`` seconds)."""
        async with asyncio.timeout(within):
            while text not in self.output():
                assert self.proc is not None and self.proc.poll() is None, self.output()
                await asyncio.sleep(0.05)

    def __enter__(self) -> AgentsProcess:
        return self.start()


class RedisClusterProcesses:
    """A Redis Cluster of ``masters`` ``redis-server`` processes on free ports, each with
    ``replicas`` replicas (none by default), no persistence unless ``args`` ask for it, made
    with ``redis-cli --cluster create``.

    Example::

        with RedisClusterProcesses(Path("/tmp/cluster")) as cluster:
            with ServerProcess(store=cluster.url(prefix="t")) as server:
                ...

    Raises:
        FileNotFoundError: ``redis-server`` or ``redis-cli`` is not on the PATH.
    """

    def __init__(
        self, folder: Path, masters: int = 3, args: list[str] | None = None, replicas: int = 0
    ) -> None:
        self.exe = _which("redis-server")
        self.cli = _which("redis-cli")
        self.folder = folder
        self.replicas = replicas
        self.ports = _cluster_ports(masters * (1 + replicas))
        self.args = list(args or [])
        self.procs: list[subprocess.Popen[bytes]] = []

    def url(self, prefix: str | None = None) -> str:
        """The ``redis+cluster://`` store URL naming every master."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        return f"redis+cluster://{hosts}" + (f"?prefix={prefix}" if prefix else "")

    def start(self, timeout: float = 30.0) -> RedisClusterProcesses:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.procs = [self._spawn(port) for port in self.ports]
        try:
            for port in self.ports:
                self._wait(port, "PING", "PONG", timeout)
            create = [self.cli, "--cluster", "create"]
            create += [f"127.0.0.1:{port}" for port in self.ports]
            create += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
            subprocess.run(create, check=True, capture_output=True, timeout=timeout)
            for port in self.ports:
                self._wait(port, "CLUSTER INFO", "cluster_state:ok", timeout)
                if self.ask(port, "ROLE").startswith("slave"):  # synced: it can take over
                    self._wait(port, "INFO replication", "master_link_status:up", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        folder = self.folder / str(port)  # each its own: an AOF directory is per server
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [self.exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
        cmd += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
        cmd += ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0", *self.args]
        with (folder / "redis.log").open("ab") as log:
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def restart(self, port: int, timeout: float = 30.0) -> None:
        """Kill the master on ``port`` (SIGKILL) and start it again: it comes back with its
        slots (the cluster config file) and, without persistence, none of their data."""
        index = self.ports.index(port)
        self.procs[index].kill()
        self.procs[index].wait()
        self.procs[index] = self._spawn(port)
        self._wait(port, "PING", "PONG", timeout)
        for each in self.ports:
            if self.procs[self.ports.index(each)].poll() is None:
                self._wait(each, "CLUSTER INFO", "cluster_state:ok", timeout)

    def kill(self, port: int) -> None:
        """Kill the server on ``port`` (SIGKILL), for good."""
        proc = self.procs[self.ports.index(port)]
        proc.kill()
        proc.wait()

    def move_slot(self, slot: int, to_port: int) -> None:
        """Move a hash slot and its keys to the master on ``to_port`` (as a resharding does,
        one slot at a time)."""
        owner = next(p for p in self.ports if self._owns(p, slot))
        if owner == to_port:
            return
        source, target = self.ask(owner, "CLUSTER", "MYID"), self.ask(to_port, "CLUSTER", "MYID")
        self.ask(to_port, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source)
        self.ask(owner, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target)
        while keys := self.ask(owner, "CLUSTER", "GETKEYSINSLOT", str(slot), "100").split():
            self.ask(owner, "MIGRATE", "127.0.0.1", str(to_port), "", "0", "5000", "KEYS", *keys)
        for port in self.ports:
            self.ask(port, "CLUSTER", "SETSLOT", str(slot), "NODE", target)

    def _owns(self, port: int, slot: int) -> bool:
        # CLUSTER COUNTKEYSINSLOT answers on any node; CLUSTER NODES says who has the slot.
        for line in self.ask(port, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "myself" not in fields[2]:
                continue
            for part in fields[8:]:
                lo, _, hi = part.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return True
        return False

    def ask(self, port: int, *command: str) -> str:
        """One command to one node (``redis-cli``), its answer as text."""
        done = subprocess.run(
            [self.cli, "-p", str(port), *command], capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip()

    def wait_replicated(self, port: int, timeout: float = 10.0) -> None:
        """Wait until the replicas of the master on ``port`` have everything it wrote
        (replication is asynchronous: a replica promoted earlier would lose the rest)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.ask(port, "INFO", "replication").splitlines()
            info = dict(line.strip().split(":", 1) for line in lines if ":" in line)
            offset = info.get("master_repl_offset")
            replicas = [v for k, v in info.items() if k.startswith("slave")]
            if replicas and all(f"offset={offset}," in v for v in replicas):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the replicas of the master on port {port} lag behind")
            time.sleep(0.05)

    def _wait(self, port: int, command: str, answer: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while answer not in self.ask(port, *command.split()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {answer!r} from the Redis Cluster node on port {port}")
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait()
        self.procs.clear()

    def __enter__(self) -> RedisClusterProcesses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _which(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not on the PATH")
    return found


def _cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster bus ports (port + 10000) are free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


_ENDED: Msg = {}  # put in a WireClient's inbox, after everything, once its connection ends


class WireClient:
    """A raw protocol client (docs/protocol.md): JSON frames over a WebSocket, batches flattened.

    Waiting for a message on a connection that has ended raises :class:`ConnectionError` at
    once (with the close code), once the messages that came before the end are read.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.connected: Msg = {}
        self._inbox: asyncio.Queue[Msg] = asyncio.Queue()
        self._held: list[Msg] = []
        self._ref = 0
        self._reader = asyncio.create_task(self._read())
        self.closed = asyncio.Event()

    @classmethod
    async def connect(cls, url: str, timeout: float = 10.0, **params: str) -> WireClient:
        query = "&".join(f"{k}={v}" for k, v in params.items() if v is not None)
        ws = await ws_connect(url + ("?" + query if query else ""), max_size=None)
        client = cls(ws)
        client.connected = await client.next(lambda m: m["action"] == "connected", timeout)
        return client

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                decoded = json.loads(frame)
                for item in decoded if isinstance(decoded, list) else [decoded]:
                    self._inbox.put_nowait(item)
        except Exception:  # the connection ended; close_code says how
            pass
        finally:
            self.closed.set()
            self._inbox.put_nowait(_ENDED)

    @property
    def close_code(self) -> int | None:
        rcvd = self.ws.protocol.close_rcvd
        return rcvd.code if rcvd is not None else None

    async def send(self, message: Msg | list[Msg] | str) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    def next_ref(self) -> int:
        self._ref += 1
        return self._ref

    async def request(self, action: str, timeout: float = 10.0, **fields: Any) -> Msg:
        """Send a request with a fresh ``ref`` and return its reply (other messages are kept)."""
        ref = self.next_ref()
        await self.send({"action": action, "ref": ref, **fields})
        return await self.next(lambda m: m.get("ref") == ref and m["action"] != "event", timeout)

    async def next(self, match: Callable[[Msg], bool] | None = None, timeout: float = 10.0) -> Msg:
        """The next message (matching ``match``, if given); others stay queued in order."""
        for i, held in enumerate(self._held):
            if match is None or match(held):
                return self._held.pop(i)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"no matching message in {timeout}s; held: {self._held[-5:]}")
            try:
                message = await asyncio.wait_for(self._inbox.get(), remaining)
            except TimeoutError:
                continue
            if message is _ENDED:
                self._inbox.put_nowait(_ENDED)  # a later wait ends at once too
                raise ConnectionError(
                    f"the connection ended (close code {self.close_code}) with no matching "
                    f"message; held: {self._held[-5:]}"
                )
            if match is None or match(message):
                return message
            self._held.append(message)

    async def events(self, channel: str, count: int, timeout: float = 10.0) -> list[Msg]:
        """The next ``count`` events of ``channel``."""
        return [
            await self.next(lambda m: m["action"] == "event" and m["channel"] == channel, timeout)
            for _ in range(count)
        ]

    async def quiet(self, seconds: float = 0.3) -> list[Msg]:
        """Everything that arrives within ``seconds`` (and what was held)."""
        await asyncio.sleep(seconds)
        out, self._held = self._held, []
        while not self._inbox.empty():
            out.append(self._inbox.get_nowait())
        if out and out[-1] is _ENDED:
            self._inbox.put_nowait(out.pop())
        return out

    def drop(self) -> None:
        """Lose the TCP connection without a close frame."""
        transport = self.ws.transport
        transport.abort()

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()

    async def __aenter__(self) -> WireClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
