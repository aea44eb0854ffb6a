"""What both benchmarks share: the server, CPU accounting, output, and a pipelined publisher."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from roomcast.testing import ServerProcess

Msg = dict[str, Any]

# Every per-connection rate limit off; the SQLite store (the default durable path).
SERVER_ENV = {"ROOMCAST_PUBLISH_RATE": "0", "ROOMCAST_LOG_LEVEL": "warning"}
PAYLOAD = "x" * 100  # the 100-byte "p" field of every published message
TIMEOUT_S = 120.0  # a measurement that takes longer has stalled
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The server answered something a correct run cannot produce."""


def emit(record: Msg) -> None:
    """One measurement: one JSON line on stdout."""
    print(json.dumps(record), flush=True)


def note(text: str) -> None:
    """Progress, on stderr so that stdout stays JSON lines only."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


def messages_of(frame: str | bytes) -> list[Msg]:
    """A server frame holds one protocol message or a JSON array of them."""
    decoded = json.loads(frame)
    return decoded if isinstance(decoded, list) else [decoded]


# ---------------------------------------------------------------------- CPU accounting


def _cpu_of_stat(path: Path) -> float:
    # Fields after the ")" that ends comm: state is field 3, utime 14 and stime 15.
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def process_cpu_s(pid: int) -> float:
    """CPU seconds a process (all its threads) has used so far."""
    return _cpu_of_stat(Path(f"/proc/{pid}/stat"))


def _machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (every process, every core)."""
    with open("/proc/stat") as stat:
        ticks = [int(t) for t in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds used so far by the server process (all threads, and its main thread
    alone: the event loop), by this benchmark process, and by the whole machine."""

    wall: float
    server: float
    server_main: float
    client: float
    machine: float

    @classmethod
    def take(cls, pid: int) -> CpuSample:
        return cls(
            wall=time.perf_counter(),
            server=_cpu_of_stat(Path(f"/proc/{pid}/stat")),
            server_main=_cpu_of_stat(Path(f"/proc/{pid}/task/{pid}/stat")),
            client=time.process_time(),
            machine=_machine_busy(),
        )

    def since(self, before: CpuSample) -> Msg:
        """What was used between ``before`` and this sample. ``other_load_cores`` is the
        machine's CPU not used by the server or this process, per second: anything else
        running on the machine at the same time (it should be near 0)."""
        wall = max(self.wall - before.wall, 1e-9)
        server = self.server - before.server
        main = self.server_main - before.server_main
        client = self.client - before.client
        other = self.machine - before.machine - server - client
        return {
            "server_cpu_s": round(server, 3),
            "server_loop_thread_cpu_s": round(main, 3),
            "server_other_threads_cpu_s": round(server - main, 3),
            "client_cpu_s": round(client, 3),
            "other_load_cores": round(max(other, 0.0) / wall, 2),
        }


# ---------------------------------------------------------------------- the server


@contextlib.contextmanager
def running_server(store: str | None = None) -> Iterator[tuple[ServerProcess, int]]:
    """A fresh ``roomcast serve`` on ``store`` (default: its own SQLite file), and its pid."""
    server = ServerProcess(store=store, env=SERVER_ENV)
    with server:
        assert server.proc is not None
        pid = server.proc.pid
        note(f"server pid {pid} on {server.ws_url}, store {server.store}")
        yield server, pid
        complaints = [
            line
            for line in server.output().splitlines()
            if any(level in line for level in ("WARNING", "ERROR", "CRITICAL", "Traceback"))
        ]
        for line in complaints[:20]:
            note(f"server log: {line}")


@contextlib.contextmanager
def py_spy(pid: int, output: str | None) -> Iterator[None]:
    """``py-spy record`` on the server while the block runs (when ``output`` is given)."""
    if output is None:
        yield
        return
    exe = shutil.which("py-spy")
    if exe is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    fmt = "raw" if output.endswith((".txt", ".raw")) else "flamegraph"
    if output.endswith(".json"):
        fmt = "speedscope"
    cmd = [exe, "record", "--pid", str(pid), "--threads", "--rate", "200"]
    cmd += ["--format", fmt, "--output", output, "--nonblocking"]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # let it attach before the measurement starts
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        note(f"py-spy wrote {output} (exit {spy.returncode}) {err.decode(errors='replace')[-300:]}")


# ---------------------------------------------------------------------- clients


async def open_client(url: str, client_id: str) -> ClientConnection:
    """A WebSocket connection that has received ``connected``."""
    ws = await connect(f"{url}?client_id={client_id}", max_size=None, compression=None)
    for message in messages_of(await asyncio.wait_for(ws.recv(), 10)):
        if message.get("action") != "connected":
            raise BenchError(f"expected connected first, got {message}")
    return ws


async def attach_once(url: str, channel: str, client_id: str) -> Msg:
    """Attach, read ``attached`` (its epoch and serial), and close cleanly."""
    ws = await open_client(url, client_id)
    try:
        await ws.send(json.dumps({"action": "attach", "channel": channel, "ref": 1}))
        while True:
            for message in messages_of(await asyncio.wait_for(ws.recv(), 10)):
                if message.get("action") == "attached" and message.get("ref") == 1:
                    return message
                if message.get("action") == "error":
                    raise BenchError(f"attach refused: {message}")
    finally:
        await ws.close()


def publish_frames(channel: str, refs: range, batch: int) -> list[str]:
    """The publish requests for ``refs``, ``batch`` to a frame (a JSON array), pre-encoded so
    that encoding them is not part of the measurement."""
    frames = []
    for start in range(refs.start, refs.stop, batch):
        requests = [
            {"action": "publish", "channel": channel, "data": {"k": i, "p": PAYLOAD}, "ref": i}
            for i in range(start, min(start + batch, refs.stop))
        ]
        frames.append(json.dumps(requests, separators=(",", ":")))
    return frames


@dataclass(slots=True)
class Pipeline:
    """One connection publishing ``refs`` with at most ``window`` requests unacknowledged."""

    ws: ClientConnection
    refs: range
    frames: list[str]
    batch: int
    window: int
    serials: list[int] = field(default_factory=list)
    first_send: float = 0.0
    last_ok: float = 0.0
    frames_received: int = 0

    async def run(self) -> None:
        self.serials = []
        more = asyncio.Event()
        more.set()
        reader = asyncio.create_task(self._read(more))
        reader.add_done_callback(lambda _: more.set())  # a failed reader wakes the sender
        try:
            self.first_send = time.perf_counter()
            sent = 0
            for frame in self.frames:
                while sent - len(self.serials) > self.window - self.batch:
                    if reader.done():
                        break
                    more.clear()
                    await more.wait()
                if reader.done():
                    break
                await self.ws.send(frame)
                sent += self.batch
            await reader  # raises what the reader found wrong
        finally:
            reader.cancel()

    async def _read(self, more: asyncio.Event) -> None:
        expected = iter(self.refs)
        count = len(self.refs)
        serials = self.serials
        while len(serials) < count:
            frame = await self.ws.recv()
            self.frames_received += 1
            for message in messages_of(frame):
                action = message.get("action")
                if action == "ok":
                    ref = next(expected, None)
                    if message.get("ref") != ref:
                        raise BenchError(f"ok out of order: expected ref {ref}, got {message}")
                    serials.append(message["serial"])
                elif action == "error":
                    raise BenchError(f"publish refused: {message}")
                # anything else (heartbeat) is not for us
            more.set()
        self.last_ok = time.perf_counter()


def check_serials(serials: list[int]) -> tuple[int, int]:
    """Every ``ok`` has a distinct serial, and together they are gap-free: (first, last)."""
    if not serials:
        raise BenchError("no serials")
    ordered = sorted(serials)
    first, last = ordered[0], ordered[-1]
    if len(set(ordered)) != len(ordered):
        raise BenchError(f"{len(ordered) - len(set(ordered))} duplicate serials")
    if last - first + 1 != len(ordered):
        raise BenchError(f"serials {first}..{last} have gaps ({len(ordered)} acks)")
    return first, last


@dataclass(frozen=True, slots=True)
class PublishRun:
    pipes: list[Pipeline]
    seconds: float  # from the first send to the last ``ok``
    first_serial: int
    last_serial: int
    cpu: Msg  # CPU used over the same span, by server and client


async def publish_pipelined(
    url: str,
    pid: int,
    channel: str,
    messages: int,
    *,
    connections: int = 1,
    batch: int = 100,
    window: int = 2000,
    client_prefix: str = "bench-pub",
) -> PublishRun:
    """Publish ``messages`` to ``channel`` over ``connections`` pipelined connections (refs
    0..messages-1, split into contiguous ranges), and check the serials the acks carry."""
    per = -(-messages // connections)
    ranges = [range(c * per, min((c + 1) * per, messages)) for c in range(connections)]
    sockets = [await open_client(url, f"{client_prefix}-{c}") for c in range(connections)]
    try:
        pipes = [
            Pipeline(ws, refs, publish_frames(channel, refs, batch), batch, window)
            for ws, refs in zip(sockets, ranges, strict=True)
        ]
        before = CpuSample.take(pid)
        async with asyncio.timeout(TIMEOUT_S):
            await asyncio.gather(*(pipe.run() for pipe in pipes))
        cpu = CpuSample.take(pid).since(before)
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    first, last = check_serials([s for pipe in pipes for s in pipe.serials])
    for pipe in pipes:
        if pipe.serials != sorted(pipe.serials):
            raise BenchError("one connection's serials do not follow its request order")
    seconds = max(p.last_ok for p in pipes) - min(p.first_send for p in pipes)
    return PublishRun(pipes, seconds, first, last, cpu)
