"""Many idle connections on one node: memory and CPU per connection, connect and resume times.

As many WebSocket connections as the file limit allows (the hard ``RLIMIT_NOFILE`` less
1,000 for the server's own files: about 19,000 where it is 20,000), each attached to one of
``--rooms`` rooms (2,000), idle with the server's heartbeats on (``--heartbeat-s``, 15 s: a
``heartbeat`` message and a WebSocket ping on every idle connection). The clients are the
picows load generator (``bench/loadgen.py``, ``.venv-peers``) in ``--processes`` processes,
spread over source addresses 127.0.0.2, ... . Measured:

- the time to connect and attach them all (as fast as they go, 200 handshakes in flight per
  process);
- server RSS per connection: RSS with every connection attached, minus RSS before (the rooms
  exist then), divided by the count;
- the server's CPU while they idle, over ``--idle-s`` (30 s: two heartbeat rounds);
- resume: a message is published into every room (acknowledged), the server is killed with
  ``kill -9`` and started again on the same SQLite file and port, and a second message is
  published into every room. Each client reconnects with its resume key (backoff from 0.1 s
  doubling to 1 s, jittered) and re-attaches its room with ``from_serial`` = the last serial
  it saw. The time runs from the kill to the last re-attach, and to every client having its
  room's last serial; every client must see every serial exactly once. ``snapshots_store``
  and ``snapshots_shared`` say how many of the re-attaches read a snapshot from the store
  and how many shared one (``roomcast_attach_snapshots_total``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from roomcast.testing import ServerProcess, free_port

from ._common import (
    SERVER_ENV,
    BenchError,
    Msg,
    emit,
    messages_of,
    note,
    open_client,
    py_spy,
)
from .rooms import (
    FD_SPARE,
    LOADGEN,
    PEERS_PYTHON,
    add_load_arguments,
    fd_limit,
    read_line,
    rss_bytes,
)
from .scale import cpu_s

GOAL_BYTES_PER_CONNECTION = 20_000
GOAL_IDLE_CORES = 0.05
GOAL_RESUME_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connections", type=int, default=0, help="0: the file limit less 1,000")
    parser.add_argument("--rooms", type=int, default=2000, help="rooms they are attached to")
    parser.add_argument("--idle-s", type=float, default=30.0, help="idle CPU measured over")
    parser.add_argument("--heartbeat-s", type=float, default=15.0, help="ROOMCAST_HEARTBEAT_S")
    add_load_arguments(parser)
    parser.add_argument("--timeout-s", type=float, default=60.0, help="resume gives up after")
    parser.add_argument("--profile", help="py-spy record the server while the connections idle")
    parser.add_argument(
        "--profile-resume", help="py-spy record the restarted server while the clients resume"
    )


async def publish_rooms(url: str, rooms: int, client_id: str) -> list[int]:
    """One acknowledged message into each room; their serials, by room."""
    ws = await open_client(url, client_id)
    serials = [0] * rooms
    try:
        for start in range(0, rooms, 100):
            batch = [
                {"action": "publish", "channel": f"bench:idle{r}", "data": "m", "ref": r}
                for r in range(start, min(start + 100, rooms))
            ]
            await ws.send(json.dumps(batch))
        acked = 0
        while acked < rooms:
            for message in messages_of(await asyncio.wait_for(ws.recv(), 30)):
                if message.get("action") == "ok":
                    serials[message["ref"]] = message["serial"]
                    acked += 1
                elif message.get("action") == "error":
                    raise BenchError(f"publish refused: {message}")
    finally:
        await ws.close()
    return serials


def start_loadgens(url: str, count: int, args: argparse.Namespace) -> list[Any]:
    procs = []
    share = -(-count // args.processes)
    for p in range(args.processes):
        first = p * share
        mine = min(share, count - first)
        base = 2 + p * 50  # process p binds 127.0.0.(2 + 50p), and on
        addresses = [f"127.0.0.{base + a}" for a in range(-(-mine // args.per_address))]
        config = {"target": "idle", "url": url, "first": first, "count": mine}
        config |= {"rooms": args.rooms, "addresses": addresses, "timeout_s": args.timeout_s}
        cmd = [str(PEERS_PYTHON), str(LOADGEN), json.dumps(config)]
        procs.append(
            subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        )
    return procs


def tell(procs: list[Any], command: Msg) -> None:
    for proc in procs:
        proc.stdin.write(json.dumps(command) + "\n")
        proc.stdin.flush()


def idle_figures(
    pid: int, rss_before: int, cpu_at_start: float, procs: list[Any], args: argparse.Namespace
) -> Msg:
    """Connect time and the server's CPU for it (``cpu_at_start``: its CPU time before the
    first connection), RSS per connection (``rss_before``: with the rooms, without the
    connections) and idle CPU."""
    ready = [read_line(p.stdout, "ready") for p in procs]
    count = sum(r["ready"] for r in ready)
    connect_s = max(r["connect_s"] for r in ready)
    connect_cpu = cpu_s(pid) - cpu_at_start
    note(f"{count} connections attached in {connect_s} s")
    time.sleep(2.0)
    rss_after = rss_bytes(pid)[0]
    with py_spy(pid, args.profile):
        cpu_before, wall = cpu_s(pid), time.monotonic()
        time.sleep(args.idle_s)
        idle_cores = (cpu_s(pid) - cpu_before) / (time.monotonic() - wall)
    per = (rss_after - rss_before) / count
    return {
        "connect_s": connect_s,
        "connect_server_cpu_us": round(connect_cpu / count * 1e6),
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "bytes_per_connection": round(per),
        "idle_cpu_cores": round(idle_cores, 3),
    }


def kill_and_resume(server: ServerProcess, procs: list[Any], args: argparse.Namespace) -> Msg:
    """Publish, ``kill -9``, restart on the same file and port, publish again, and wait for
    every client to have resumed and seen its room's last serial."""
    asyncio.run(publish_rooms(server.ws_url, args.rooms, "bench-before"))
    time.sleep(1.0)
    killed = time.monotonic_ns()
    server.stop(signal.SIGKILL)
    server.start(timeout=60)
    ready = time.monotonic_ns()
    assert server.proc is not None
    cpu_ready = cpu_s(server.proc.pid)
    note(f"server restarted in {(ready - killed) / 1e9:.2f} s")
    with py_spy(server.proc.pid, args.profile_resume):
        serials = asyncio.run(publish_rooms(server.ws_url, args.rooms, "bench-after"))
        tell(procs, {"cmd": "expect", "serials": serials, "since_ns": killed})
        seen = [read_line(p.stdout, "resume")["resume"] for p in procs]
    resume_cpu = cpu_s(server.proc.pid) - cpu_ready
    out: Msg = {"restart_s": round((ready - killed) / 1e9, 2)} | attach_snapshots(server.url)
    out["resume_server_cpu_us"] = round(resume_cpu / sum(s["clients"] for s in seen) * 1e6)
    for key in seen[0]:
        if key.endswith("_ns"):  # after the kill, and after the restarted server was ready
            last = max(s[key] for s in seen)
            out[key.replace("_ns", "_s")] = round((last - killed) / 1e9, 2)
            out[key.replace("_ns", "_after_ready_s")] = round((last - ready) / 1e9, 2)
        elif key == "first_error":
            out[key] = next((s[key] for s in seen if s[key]), "")
        else:
            out[key] = sum(s[key] for s in seen)
    return out


def attach_snapshots(url: str) -> Msg:
    """How many attach snapshots the server read from its store, and how many it shared."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: Msg = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "roomcast_attach_snapshots_total":
                out[f"snapshots_{sample.labels['source']}"] = int(sample.value)
    return out


def run(args: argparse.Namespace) -> None:
    if not PEERS_PYTHON.exists():
        raise SystemExit("bench: the load generator needs the peers' environment: make peers-env")
    limit = fd_limit()
    count = args.connections or limit - 1000
    if count + FD_SPARE > limit:
        raise SystemExit(
            f"bench: {count} connections do not fit: the server would hold {count + FD_SPARE} "
            f"files, over the limit of {limit} per process (hard RLIMIT_NOFILE)"
        )
    env = {**SERVER_ENV, "ROOMCAST_HEARTBEAT_S": str(args.heartbeat_s)}
    env["ROOMCAST_MAX_CONNECTIONS"] = str(count + 1000)
    with tempfile.TemporaryDirectory(prefix="roomcast-bench-connections-") as folder:
        store = f"sqlite:///{Path(folder) / 'roomcast.db'}"
        with ServerProcess(store=store, env=env, port=free_port()) as server:
            asyncio.run(publish_rooms(server.ws_url, args.rooms, "bench-rooms"))
            assert server.proc is not None
            pid = server.proc.pid
            rss_before, cpu_before = rss_bytes(pid)[0], cpu_s(pid)
            procs = start_loadgens(f"ws://127.0.0.1:{server.port}", count, args)
            try:
                record: Msg = {"bench": "connections", "connections": count, "rooms": args.rooms}
                record |= idle_figures(pid, rss_before, cpu_before, procs, args)
                record |= kill_and_resume(server, procs, args)
                tell(procs, {"cmd": "stop"})
            finally:
                for proc in procs:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(30)
                    proc.kill()
    record["heartbeat_s"] = args.heartbeat_s
    record["goals"] = {
        "bytes_per_connection": GOAL_BYTES_PER_CONNECTION,
        "idle_cpu_cores": GOAL_IDLE_CORES,
        "caught_up_after_ready_s": GOAL_RESUME_S,
    }
    record["goals_met"] = (
        record["bytes_per_connection"] <= GOAL_BYTES_PER_CONNECTION
        and record["idle_cpu_cores"] < GOAL_IDLE_CORES
        and record["caught_up"] == count
        and record["caught_up_after_ready_s"] <= GOAL_RESUME_S
        and not (record["gaps"] or record["dups"] or record["discontinuities"])
    )
    emit(record)
