"""Fan-out, latency and idle-memory figures for roomcast next to its peers, in one run.

The peers are ``../shared/bench/peers.py`` (python-socketio, and a raw ``websockets``
broadcast loop) and the load generator is ``../shared/bench/fanout.py`` (picows). They run
in their own virtual environment, ``.venv-peers`` at the repository root::

    python -m venv .venv-peers
    .venv-peers/bin/pip install python-socketio uvicorn websockets picows uvloop

roomcast runs as ``roomcast serve`` on a fresh SQLite file (every message durably sequenced),
with ``ROOMCAST_PUBLISH_RATE=0``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from roomcast.testing import ServerProcess, free_port

from ._common import SERVER_ENV, emit, note

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "bench"
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
TARGETS = ("roomcast", "raw", "socketio")
P99_LIMIT_MS = 200.0

Msg = dict[str, Any]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    parser.add_argument("--subs", type=int, default=500, help="fan-out subscribers")
    parser.add_argument(
        "--rates",
        default="50,100,200,300,400,500,600,800,1000,1200",
        help="publish rates for roomcast and raw, msg/s, rising",
    )
    parser.add_argument(
        "--socketio-rates", default="5,10,20,30,40,60,80", help="publish rates for socketio"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="per rate")
    parser.add_argument("--latency-subs", type=int, default=100)
    parser.add_argument("--latency-rate", type=float, default=50.0)
    parser.add_argument("--idle", type=int, default=5000, help="idle connections for memory")
    parser.add_argument(
        "--skip", default="", help="comma-separated parts to skip: fanout,latency,memory"
    )


def _check_peers() -> None:
    if not PEERS_PYTHON.exists():
        sys.exit(
            "bench: the peers need their own environment; from the repository root run\n"
            "  python -m venv .venv-peers && .venv-peers/bin/pip install "
            "python-socketio uvicorn websockets picows uvloop"
        )
    if not (SHARED / "fanout.py").exists():
        sys.exit(f"bench: the shared load generator is missing: {SHARED / 'fanout.py'}")


@contextlib.contextmanager
def target_server(kind: str) -> Iterator[tuple[str, int]]:
    """Serve ``kind`` on a free port; yields (ws base URL, server pid)."""
    if kind == "roomcast":
        env = {**SERVER_ENV, "ROOMCAST_OUTBOUND_QUEUE": "100000"}
        with ServerProcess(env=env) as server:
            assert server.proc is not None
            yield f"ws://127.0.0.1:{server.port}", server.proc.pid
        return
    port = free_port()
    proc = subprocess.Popen(
        [str(PEERS_PYTHON), str(SHARED / "peers.py"), kind, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, proc)
        yield f"ws://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"peer server exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"peer server on {port} did not start")


def load(kind: str, url: str, subs: int, rate: float, seconds: float) -> Msg:
    """One run of the shared load generator, with its CPU time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [
            str(PEERS_PYTHON),
            str(SHARED / "fanout.py"),
            kind,
            url,
            *("--subs", str(subs), "--rate", str(rate), "--seconds", str(seconds)),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed for {kind}: {out.stderr[-2000:]}")
    result: Msg = json.loads(out.stdout.strip().splitlines()[-1])
    result["loadgen_cpu_s"] = round(
        (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2
    )
    return result


def sustained(kind: str, subs: int, rates: list[float], seconds: float) -> Msg:
    """The highest deliveries/s over rising rates with everything delivered and p99 < 200 ms."""
    best: Msg = {"kind": kind, "deliveries_per_s": 0, "rate": 0}
    with target_server(kind) as (url, _pid):
        for rate in rates:
            result = load(kind, url, subs, rate, seconds)
            ok = (
                result["delivered"] == result["expected"]
                and (result["p99_ms"] or 1e9) < P99_LIMIT_MS
            )
            emit({"bench": "fanout", **result, "sustained": ok})
            if ok and result["deliveries_per_s"] > best["deliveries_per_s"]:
                best = result
            if not ok:
                break
    return best


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


IDLE_CLIENT = r"""
import asyncio, sys
import uvloop
from picows import WSListener, WSMsgType, ws_connect

kind, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])

class L(WSListener):
    def on_ws_connected(self, t):
        self.t = t
        self.ready = asyncio.get_running_loop().create_future()
        if kind == "raw":
            self.ready.set_result(True)
    def on_ws_frame(self, t, frame):
        if frame.msg_type != WSMsgType.TEXT:
            return
        text = frame.get_payload_as_ascii_text()
        if kind == "socketio":
            if text.startswith("0{"):
                t.send(WSMsgType.TEXT, b"40")
            elif text == "2":
                t.send(WSMsgType.TEXT, b"3")
            elif text.startswith("40") and not self.ready.done():
                self.ready.set_result(True)
        elif '"connected"' in text and not self.ready.done():
            self.ready.set_result(True)

async def main():
    path = {
        "roomcast": "/v1/ws?client_id=idle-",
        "socketio": "/socket.io/?EIO=4&transport=websocket",
        "raw": "",
    }[kind]
    conns = []
    for k in range(n):
        suffix = str(k) if kind == "roomcast" else ""
        _, listener = await ws_connect(L, url + path + suffix)
        await asyncio.wait_for(listener.ready, 10)
        conns.append(listener)
    print("ready", flush=True)
    sys.stdin.readline()
    for c in conns:
        c.t.disconnect()

uvloop.run(main())
"""


def idle_memory(kind: str, n: int) -> Msg:
    """Server memory per idle connection: RSS after N connections, minus RSS before."""
    with target_server(kind) as (url, pid):
        if kind == "roomcast":  # one connection first, so lazy imports are not counted
            warm = _idle_clients(kind, url, 1)
            warm.communicate("\n", timeout=30)
        time.sleep(0.5)
        before = rss_kb(pid)
        clients = _idle_clients(kind, url, n)
        time.sleep(2.0)
        after = rss_kb(pid)
        clients.communicate("\n", timeout=60)
    per = (after - before) * 1024 / n
    return {
        "bench": "memory",
        "kind": kind,
        "connections": n,
        "rss_before_kb": before,
        "rss_after_kb": after,
        "bytes_per_connection": round(per),
        "kb_per_connection": round(per / 1000, 1),
    }


def _idle_clients(kind: str, url: str, n: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [str(PEERS_PYTHON), "-c", IDLE_CLIENT, kind, url, str(n)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"idle clients for {kind} did not connect")
    return proc


def run(args: argparse.Namespace) -> None:
    _check_peers()
    targets = [t for t in args.targets.split(",") if t]
    skip = set(args.skip.split(","))
    rates = [float(r) for r in args.rates.split(",")]
    sio_rates = [float(r) for r in args.socketio_rates.split(",")]
    if "fanout" not in skip:
        best = {}
        for kind in targets:
            note(f"fan-out sweep: {kind}, {args.subs} subscribers")
            best[kind] = sustained(
                kind, args.subs, sio_rates if kind == "socketio" else rates, args.seconds
            )
        summary: Msg = {
            "bench": "fanout-summary",
            "subs": args.subs,
            **{f"{k}_sustained_deliveries_per_s": v["deliveries_per_s"] for k, v in best.items()},
        }
        own = best.get("roomcast", {}).get("deliveries_per_s", 0)
        for peer, goal in (("raw", 1.5), ("socketio", 15.0)):
            theirs = best.get(peer, {}).get("deliveries_per_s", 0)
            if own and theirs:
                summary[f"ratio_vs_{peer}"] = round(own / theirs, 2)
                summary[f"goal_vs_{peer}"] = goal
        emit(summary)
    if "latency" not in skip:
        for kind in targets:
            note(f"latency: {kind}")
            with target_server(kind) as (url, _pid):
                result = load(kind, url, args.latency_subs, args.latency_rate, args.seconds)
            emit({"bench": "latency", **result})
    if "memory" not in skip:
        for kind in targets:
            note(f"idle memory: {kind}, {args.idle} connections")
            emit(idle_memory(kind, args.idle))


__all__ = ["add_arguments", "run"]
