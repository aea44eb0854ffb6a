"""Several nodes on one Redis: fan-out across nodes, acknowledged publishes, 1 to 3 nodes.

Three parts (``--skip`` any of them), each next to a single ``roomcast serve`` on a fresh
SQLite file measured in the same run:

- ``fanout``: ``--subs`` subscribers (default 500) on one channel, split evenly over the
  nodes, and one publisher on the first node, at rising rates. A rate is sustained when every
  message reached every subscriber with p99 under 200 ms; the figure is the highest
  deliveries/s sustained, with the p99 of the subscribers on the publisher's node and on the
  other nodes (cross-node: through Redis pub/sub) reported apart.
- ``publish``: acknowledged publishes per second on one channel, pipelined as in
  ``python -m bench publish`` (arrays of 100, at most 2,000 unacknowledged).
- ``nodes``: 1, 2 and 3 nodes on Redis: the aggregate acknowledged publish rate with one
  pipelined publisher per node (each on its own channel), and the sustained fan-out.

Redis is a ``redis-server`` of its own on a free port (``--aof``: ``everysec`` by default, as
docs/deploy.md recommends), unless ``--redis URL`` names one (a key prefix of its own is
used and deleted afterwards). With ``--cluster`` it is a Redis Cluster of three masters of
its own (the same ``--aof``; ``redis-cli`` on the PATH), the nodes on ``redis+cluster://``,
and the Redis CPU and memory figures are the three masters' together. Every process (nodes,
Redis, the subscriber processes, this one) shares the machine's cores: on a small machine the
figures are CPU-bound and say how the work divides, not how far more machines would go.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from roomcast.testing import RedisClusterProcesses, ServerProcess, free_port

from ._common import (
    SERVER_ENV,
    TIMEOUT_S,
    BenchError,
    CpuSample,
    Msg,
    Pipeline,
    check_serials,
    emit,
    note,
    open_client,
    publish_frames,
    publish_pipelined,
)

PEERS_PYTHON = Path(__file__).resolve().parents[1] / ".venv-peers" / "bin" / "python"
P99_LIMIT_MS = 200.0
PUBLISH_GOAL = 20_000
NODE_ENV = {**SERVER_ENV, "ROOMCAST_OUTBOUND_QUEUE": "100000"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subs", type=int, default=500, help="fan-out subscribers")
    parser.add_argument(
        "--rates", default="400,800,1000,1200,1600,2000", help="publish rates, msg/s, rising"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="per rate")
    parser.add_argument("--messages", type=int, default=50_000, help="publishes per measurement")
    parser.add_argument("--nodes", default="1,2,3", help="node counts for the scaling part")
    parser.add_argument("--redis", help="use this Redis (redis://host:port/db) instead")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="run on a Redis Cluster of three masters of its own (redis+cluster://)",
    )
    parser.add_argument(
        "--aof",
        default="everysec",
        choices=["everysec", "always", "no"],
        help="the private redis-server's appendfsync ('no': no AOF at all)",
    )
    parser.add_argument(
        "--skip", default="", help="comma-separated parts to skip: fanout,publish,nodes"
    )


# ---------------------------------------------------------------------- Redis and nodes


def aof_args(args: argparse.Namespace) -> list[str]:
    if args.aof == "no":
        return ["--appendonly", "no"]
    return ["--appendonly", "yes", "--appendfsync", args.aof]


@contextlib.contextmanager
def redis_server(args: argparse.Namespace) -> Iterator[tuple[str, list[int]]]:
    """A Redis for the run: (URL with a prefix of its own, the redis-server pids: none for
    ``--redis``, three for ``--cluster``)."""
    import redis

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    if args.cluster:
        with (
            tempfile.TemporaryDirectory(prefix="roomcast-bench-cluster-") as folder,
            RedisClusterProcesses(Path(folder), 3, aof_args(args)) as cluster,
        ):
            pids = [proc.pid for proc in cluster.procs]
            note(f"Redis Cluster: masters {cluster.ports}, pids {pids}, appendfsync {args.aof}")
            yield cluster.url(prefix=prefix), pids
        return
    if args.redis:
        yield f"{args.redis}?prefix={prefix}", []
        client = redis.Redis.from_url(args.redis)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        client.close()
        return
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("bench scale needs redis-server on the PATH (or --redis URL)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="roomcast-bench-redis-") as folder:
        cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder]
        cmd += aof_args(args)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            client.close()
            note(f"redis-server pid {proc.pid} on {port}, appendfsync {args.aof}")
            yield f"redis://127.0.0.1:{port}/0?prefix={prefix}", [proc.pid]
        finally:
            proc.terminate()
            proc.wait(10)


def redis_memory(url: str) -> int:
    """Redis's ``used_memory``: what its data takes (one event: its log entry, its message,
    its index entry); a cluster's masters together."""
    import redis

    plain = url.split("?", 1)[0]
    if plain.startswith("redis+cluster://"):
        hosts = [h.rpartition(":") for h in plain.removeprefix("redis+cluster://").split(",")]
        clients = [redis.Redis(host=host, port=int(port)) for host, _, port in hosts]
    else:
        clients = [redis.Redis.from_url(plain)]
    try:
        return sum(int(client.info("memory")["used_memory"]) for client in clients)
    finally:
        for client in clients:
            client.close()


@contextlib.contextmanager
def nodes(store: str | None, count: int) -> Iterator[list[ServerProcess]]:
    """``count`` nodes on ``store`` (None: one node on a fresh SQLite file)."""
    servers = [ServerProcess(store=store, env=NODE_ENV) for _ in range(count)]
    try:
        for server in servers:
            server.start()
        yield servers
        for server in servers:
            complaints = [
                line
                for line in server.output().splitlines()
                if any(w in line for w in ("WARNING", "ERROR", "Traceback"))
            ]
            for line in complaints[:10]:
                note(f"server log: {line}")
    finally:
        for server in servers:
            server.close()


def pid_of(server: ServerProcess) -> int:
    assert server.proc is not None
    return server.proc.pid


def cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------- fan-out

# The fan-out load generator: picows in the peers' environment (.venv-peers, ``make
# peers-env``), as ``python -m bench peers`` uses, because a ``websockets`` client reading 500
# sockets saturates this machine's cores before one roomcast node does. Subscriber i connects
# to node ``i % len(urls)``; the publisher is on the first node; every message carries its
# send time (``time.monotonic_ns``, read again in the same process on arrival).
FANOUT_CLIENT = r"""
import asyncio, json, sys, time
import uvloop
from picows import WSListener, WSMsgType, ws_connect

urls, channel = sys.argv[1].split(","), sys.argv[2]
subs, rate, seconds = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])

class L(WSListener):
    def __init__(self, lat, publisher=False):
        self.lat, self.publisher = lat, publisher
        self.ready = asyncio.get_running_loop().create_future()
    def on_ws_connected(self, t):
        self.t = t
    def on_ws_frame(self, t, frame):
        if frame.msg_type != WSMsgType.TEXT:
            return
        text = frame.get_payload_as_ascii_text()
        if not self.ready.done():
            if '"connected"' in text:
                if self.publisher:
                    self.ready.set_result(True)
                else:
                    t.send(WSMsgType.TEXT, ('{"action":"attach","channel":"%s","ref":1}'
                                            % channel).encode())
            elif '"attached"' in text:
                self.ready.set_result(True)
            return
        now = time.monotonic_ns()
        i = text.find('"t":')
        while i >= 0:
            i += 4
            j = i
            while text[j].isdigit():
                j += 1
            self.lat.append(now - int(text[i:j]))
            i = text.find('"t":', j)

async def main():
    lats = [[] for _ in urls]
    conns = []
    for k in range(subs):
        n = k % len(urls)
        _, sub = await ws_connect(lambda: L(lats[n]), urls[n] + "/v1/ws?client_id=sub-%d" % k)
        await asyncio.wait_for(sub.ready, 30)
        conns.append(sub)
    _, pub = await ws_connect(lambda: L([], True), urls[0] + "/v1/ws?client_id=publisher")
    await asyncio.wait_for(pub.ready, 30)
    await asyncio.sleep(0.5)
    pad = "x" * 100
    total = int(rate * seconds)
    start = time.monotonic()
    for k in range(total):
        delay = start + k / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        pub.t.send(WSMsgType.TEXT, ('{"action":"publish","channel":"%s","data":'
                                    '{"t":%d,"k":%d,"p":"%s"}}'
                                    % (channel, time.monotonic_ns(), k, pad)).encode())
    expected = total * subs
    deadline = time.monotonic() + 10
    while sum(map(len, lats)) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - start
    def q(values, p):
        if not values:
            return None
        values = sorted(values)
        return round(values[min(len(values) - 1, int(p * len(values)))] / 1e6, 2)
    every = [x for lat in lats for x in lat]
    cross = [x for lat in lats[1:] for x in lat]
    print(json.dumps({"expected": expected, "delivered": len(every),
                      "deliveries_per_s": round(len(every) / elapsed),
                      "p50_ms": q(every, 0.5), "p99_ms": q(every, 0.99),
                      "p99_same_node_ms": q(lats[0], 0.99), "p99_cross_node_ms": q(cross, 0.99),
                      "max_ms": q(every, 1.0)}))
    for c in conns + [pub]:
        c.t.disconnect()

uvloop.run(main())
"""


def fanout_step(servers: list[ServerProcess], subs: int, rate: float, seconds: float) -> Msg:
    """One run of the load generator at ``rate``, with the nodes' CPU meanwhile."""
    if not PEERS_PYTHON.exists():
        raise SystemExit(
            "bench scale: the fan-out load generator needs the peers' environment: make peers-env"
        )
    channel = f"bench:fanout:{uuid.uuid4().hex[:8]}"
    urls = ",".join(f"ws://127.0.0.1:{server.port}" for server in servers)
    pids = [pid_of(s) for s in servers]
    before = [cpu_s(pid) for pid in pids]
    busy = CpuSample.take(pids[0])
    out = subprocess.run(
        [str(PEERS_PYTHON), "-c", FANOUT_CLIENT, urls, channel, *map(str, (subs, rate, seconds))],
        capture_output=True,
        text=True,
        timeout=seconds + 180,
    )
    after = CpuSample.take(pids[0])
    if out.returncode != 0:
        raise BenchError(f"the load generator failed: {out.stderr[-2000:]}")
    result: Msg = json.loads(out.stdout.strip().splitlines()[-1])
    p99 = result["p99_ms"]
    return {
        "subs": subs,
        "rate": rate,
        **result,
        "sustained": result["delivered"] == result["expected"]
        and p99 is not None
        and p99 < P99_LIMIT_MS,
        "nodes_cpu_s": [round(cpu_s(pid) - b, 2) for pid, b in zip(pids, before, strict=True)],
        "machine_busy_cores": round(
            (after.machine - busy.machine) / max(after.wall - busy.wall, 1e-9), 2
        ),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def fanout_sweep(label: str, servers: list[ServerProcess], args: argparse.Namespace) -> Msg:
    """Rising rates until one is not sustained; the best sustained step."""
    best: Msg = {"deliveries_per_s": 0}
    for rate in [float(r) for r in args.rates.split(",") if r.strip()]:
        step = fanout_step(servers, args.subs, rate, args.seconds)
        emit({"bench": "scale_fanout", "store": label, "nodes": len(servers), **step})
        if not step["sustained"]:
            break
        if step["deliveries_per_s"] > best["deliveries_per_s"]:
            best = step
    return best


# ---------------------------------------------------------------------- publish


async def publish_on(
    servers: list[ServerProcess], messages: int, *, same_channel: bool, redis_pids: list[int]
) -> tuple[float, Msg]:
    """One pipelined publisher per node, ``messages`` each (on one channel, or one channel
    per node); the aggregate acks/s. Every channel's serials are checked gap-free."""
    channel = f"bench:pub:{uuid.uuid4().hex[:8]}"
    names = [channel if same_channel else f"{channel}:{n}" for n in range(len(servers))]
    sockets = [await open_client(s.ws_url, f"pub-{n}") for n, s in enumerate(servers)]
    pids = [pid_of(s) for s in servers]
    try:
        refs = range(messages)
        pipes = [
            Pipeline(ws, refs, publish_frames(name, refs, 100), 100, 2000)
            for ws, name in zip(sockets, names, strict=True)
        ]
        before = [cpu_s(pid) for pid in pids]
        redis_before = sum(map(cpu_s, redis_pids))
        async with asyncio.timeout(TIMEOUT_S):
            await asyncio.gather(*(pipe.run() for pipe in pipes))
        used = [round(cpu_s(pid) - b, 2) for pid, b in zip(pids, before, strict=True)]
        redis_used = round(sum(map(cpu_s, redis_pids)) - redis_before, 2) if redis_pids else None
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    if same_channel:
        check_serials([s for pipe in pipes for s in pipe.serials])
    else:
        for pipe in pipes:
            check_serials(pipe.serials)
    seconds = max(p.last_ok for p in pipes) - min(p.first_send for p in pipes)
    return len(servers) * messages / seconds, {
        "seconds": round(seconds, 3),
        "nodes_cpu_s": used,
        "redis_cpu_s": redis_used,
    }


# ---------------------------------------------------------------------- the run


async def _warm(servers: list[ServerProcess]) -> None:
    for n, server in enumerate(servers):
        await publish_pipelined(
            server.ws_url, pid_of(server), f"bench:warm:{n}", 2000, client_prefix=f"warm-{n}"
        )


def run(args: argparse.Namespace) -> None:
    skip = set(args.skip.split(","))
    counts = [int(n) for n in args.nodes.split(",") if n.strip()]
    if args.cluster and args.redis:
        raise SystemExit("bench scale: --cluster starts its own cluster; leave out --redis")
    label = "cluster" if args.cluster else "redis"  # the shared store, in figures and keys
    summary: Msg = {"bench": "scale_summary", "subs": args.subs, "store": label}
    with redis_server(args) as (redis_url, redis_pids):
        if "fanout" not in skip:
            note(f"fan-out: {args.subs} subscribers on one SQLite node")
            with nodes(None, 1) as servers:
                best = fanout_sweep("sqlite", servers, args)
            summary["sqlite_1_node_sustained_deliveries_per_s"] = best["deliveries_per_s"]
            note(f"fan-out: {args.subs} subscribers over 2 nodes on {label}")
            with nodes(redis_url, 2) as servers:
                best = fanout_sweep(label, servers, args)
            summary[f"{label}_2_nodes_sustained_deliveries_per_s"] = best["deliveries_per_s"]
            summary[f"{label}_2_nodes_p99_cross_node_ms"] = best.get("p99_cross_node_ms")
        if "publish" not in skip:
            for name, store in (("sqlite", None), (label, redis_url)):
                note(f"publish: {args.messages} pipelined publishes on one {name} node")
                with nodes(store, 1) as servers:
                    asyncio.run(_warm(servers))
                    memory = redis_memory(redis_url) if store else None
                    rate, extra = asyncio.run(
                        publish_on(
                            servers,
                            args.messages,
                            same_channel=True,
                            redis_pids=redis_pids if store else [],
                        )
                    )
                    if memory is not None:
                        grown = redis_memory(redis_url) - memory
                        extra["redis_bytes_per_event"] = round(grown / args.messages)
                emit(
                    {
                        "bench": "scale_publish",
                        "store": name,
                        "nodes": 1,
                        "messages": args.messages,
                        "acks_per_s": round(rate),
                        "goal": PUBLISH_GOAL,
                        **extra,
                    }
                )
                summary[f"{name}_publish_acks_per_s"] = round(rate)
        if "nodes" not in skip:
            for count in counts:
                note(f"scaling: {count} node(s) on {label}")
                with nodes(redis_url, count) as servers:
                    asyncio.run(_warm(servers))
                    for same in (False, True):
                        rate, extra = asyncio.run(
                            publish_on(
                                servers,
                                args.messages // count,
                                same_channel=same,
                                redis_pids=redis_pids,
                            )
                        )
                        emit(
                            {
                                "bench": "scale_nodes_publish",
                                "store": label,
                                "nodes": count,
                                "channels": 1 if same else count,
                                "acks_per_s": round(rate),
                                **extra,
                            }
                        )
                        key = "one_channel" if same else "channel_per_node"
                        summary[f"scaling_{count}_nodes_publish_{key}_acks_per_s"] = round(rate)
                    best = fanout_sweep(label, servers, args)
                    key = f"scaling_{count}_nodes_sustained_deliveries_per_s"
                    summary[key] = best["deliveries_per_s"]
        summary["cores"] = os.cpu_count()
        summary["redis_appendfsync"] = None if args.redis else args.aof
        if redis_pids:
            summary["redis_cpu_s"] = round(sum(map(cpu_s, redis_pids)), 2)
    emit(summary)


__all__ = ["add_arguments", "run"]
