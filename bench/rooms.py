"""The AI group-chat mix: R rooms of M members, people talking and an agent answering.

Each room has ``--members`` WebSocket members (10), all attached to it. One of them is the
room's person, who publishes every ``--interval-s`` (10 s; the rooms are spread over it), and
every second message mentions the agent ``bot``: the scripted provider inside the server
process, which answers 200 words, 20 ms apart, streamed as one message (publish, appends,
``complete``). The members run in ``--processes`` picows load generators (``bench/loadgen.py``
in ``.venv-peers``, ``make peers-env``), spread over source addresses 127.0.0.2, 127.0.0.3, ...
so that no address runs out of ephemeral ports. Every member checks that the serials it gets
are gap-free. Measured, over ``--duration-s`` after ``--warmup-s``: messages and fragments
delivered, message latency (publish to each member), the spread of each fragment over a room's
members (last member's receipt minus the first's), first token (mention published to each
member's first fragment of the answer), every mention's answer ``complete``, server CPU (cores)
and RSS. It sweeps ``--rooms`` and reports the largest R that meets the goals.

The anchor, in the same run: a Node.js socket.io server with rooms (``bench/node/rooms.mjs``,
``npm ci`` there once), the same rooms and members from the same load generator, and a client
per room that plays the agent: on a mention it emits the answer's fragments at the same pace.
It stores nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from prometheus_client.parser import text_string_to_metric_families

from roomcast.testing import ServerProcess, free_port

from ._common import SERVER_ENV, Msg, emit, note, py_spy
from ._common import _cpu_of_stat as cpu_of_stat
from ._common import _machine_busy as machine_busy
from .agents import AGENTS
from .scale import cpu_s

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
LOADGEN = Path(__file__).with_name("loadgen.py")
NODE_DIR = Path(__file__).with_name("node")
FD_SPARE = 100  # files a process holds besides its connections (node: about 30)
GOAL_P99_MS = 100.0
GOAL_RSS_BYTES = 1 << 30
SCRIPT_HEAD = "delay_ms = {delay}\n[[replies]]\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rooms", default="250,500,1000,1800", help="room counts, rising")
    parser.add_argument("--members", type=int, default=10, help="members per room")
    parser.add_argument("--targets", default="roomcast,socketio", help="comma-separated")
    parser.add_argument("--ramp-s", type=float, default=20.0, help="connects spread over this")
    parser.add_argument("--warmup-s", type=float, default=10.0, help="traffic not measured")
    parser.add_argument("--duration-s", type=float, default=60.0, help="traffic measured")
    parser.add_argument("--drain-s", type=float, default=10.0, help="answers end, frames arrive")
    parser.add_argument("--interval-s", type=float, default=10.0, help="each person's pace")
    parser.add_argument("--words", type=int, default=200, help="words per answer")
    parser.add_argument("--fragment-ms", type=float, default=20.0, help="between two words")
    add_load_arguments(parser)
    parser.add_argument("--profile", help="py-spy record the roomcast server to this file")
    parser.add_argument(
        "--refine",
        type=refinement_count,
        default=0,
        help="after the sweep, this many more sizes per target, each halfway between the "
        "largest it met and the smallest it missed above that",
    )


def refinement_count(text: str) -> int:
    """``--refine``: a whole number of sizes, 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a count of sizes (0 or more)")
    return int(text)


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The load generator's options, which ``bench connections`` shares."""
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument(
        "--per-address", type=int, default=5000, help="connections per source address"
    )


# ---------------------------------------------------------------------- limits


def fd_limit() -> int:
    """The soft file limit raised to the hard one here, so every process started from now
    on (server, node, load generators) inherits it; returns it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def does_not_fit(target: str, rooms: int, args: argparse.Namespace, limit: int) -> str | None:
    """Why this size needs more files than a process may open, or None."""
    per_room = args.members + (1 if target == "socketio" else 0)  # the anchor's agent client
    server = rooms * per_room + FD_SPARE
    loadgen = -(-rooms // args.processes) * per_room + FD_SPARE
    if server > limit:
        return f"the server would hold {server} files, over the limit of {limit} per process"
    if loadgen > limit:
        return f"a load generator would hold {loadgen} files, over the limit of {limit}"
    return None


# ---------------------------------------------------------------------- servers


@contextlib.contextmanager
def roomcast_server(rooms: int, args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    """``roomcast serve`` with the scripted agent; yields (ws base URL, pid)."""
    with tempfile.TemporaryDirectory(prefix="roomcast-bench-rooms-") as folder:
        words = " ".join(f"w{k}" for k in range(args.words))
        script = SCRIPT_HEAD.format(delay=args.fragment_ms) + f"text = {json.dumps(words)}\n"
        (Path(folder) / "script.toml").write_text(script)
        agents = Path(folder) / "agents.toml"
        # One answer at a time per room at most: the cap on answers at once is the room count.
        agents.write_text(
            AGENTS.replace("{script}", "script.toml") + f"max_concurrent_answers = {rooms}\n"
        )
        env = {
            **SERVER_ENV,
            "ROOMCAST_APPEND_RATE": "0",
            "ROOMCAST_MAX_CONNECTIONS": str(rooms * args.members + 1000),
            "ROOMCAST_MAX_CHANNELS_PER_CONNECTION": str(rooms + 100),
            "ROOMCAST_MAX_PENDING_WRITES": "1000000",
        }
        with ServerProcess(env=env, args=["--agents", str(agents)]) as server:
            assert server.proc is not None
            yield f"ws://127.0.0.1:{server.port}", server.proc.pid
            log = server.output()
            if "ERROR" in log or "Traceback" in log:
                kept = Path(tempfile.mkstemp(prefix="roomcast-bench-rooms-", suffix=".log")[1])
                kept.write_text(log)
                note(f"the server logged errors: its log is kept in {kept}")


@contextlib.contextmanager
def socketio_server() -> Iterator[tuple[str, int]]:
    """The socket.io anchor; yields (ws base URL, pid)."""
    if not (NODE_DIR / "node_modules" / "socket.io").exists():
        raise SystemExit(f"bench: the anchor needs its packages: cd {NODE_DIR} && npm ci")
    port = free_port()
    proc = subprocess.Popen(
        ["node", str(NODE_DIR / "rooms.mjs"), str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        if not proc.stdout.readline().startswith("listening"):
            raise RuntimeError("the socket.io anchor did not start")
        yield f"ws://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def rss_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM: the peak) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


# ---------------------------------------------------------------------- load generators


def start_loadgens(target: str, url: str, rooms: int, args: argparse.Namespace) -> list[Any]:
    procs = []
    for p in range(args.processes):
        share = list(range(p, rooms, args.processes))
        count = len(share) * (args.members + (1 if target == "socketio" else 0))
        first = 2 + p * 50  # process p binds 127.0.0.(2 + 50p), and on
        addresses = [f"127.0.0.{first + a}" for a in range(-(-count // args.per_address))]
        config = {
            "target": target,
            "url": url,
            "rooms": share,
            "total_rooms": rooms,
            "members": args.members,
            "addresses": addresses,
            **{
                key: getattr(args, key)
                for key in ("ramp_s", "warmup_s", "duration_s", "drain_s", "interval_s")
            },
            "words": args.words,
            "fragment_ms": args.fragment_ms,
        }
        cmd = [str(PEERS_PYTHON), str(LOADGEN), json.dumps(config)]
        procs.append(
            subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        )
    return procs


def read_line(stream: IO[str] | None, key: str) -> Msg:
    """A load generator's next line, which must hold ``key``."""
    assert stream is not None
    line = stream.readline()
    record: Msg = json.loads(line) if line else {}
    if key not in record:
        raise RuntimeError(f"a load generator stopped before its {key!r} line: {line[-300:]}")
    return record


def percentile(hist: Counter[int], q: float) -> float | None:
    """The q-quantile of a histogram of 0.1 ms buckets, in ms."""
    total = sum(hist.values())
    if not total:
        return None
    rank = min(int(q * total), total - 1)
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen > rank:
            return round(bucket / 10, 1)
    raise AssertionError("unreachable")


def merge(results: list[Msg]) -> Msg:
    """The processes' counts added up, their histograms merged into percentiles."""
    merged: Msg = {}
    hists: dict[str, Counter[int]] = {}
    for result in results:
        for key, value in result.items():
            if key == "hist":
                for name, counts in value.items():
                    hist = hists.setdefault(name, Counter())
                    hist.update({int(k): v for k, v in counts.items()})
            elif key == "first_error":
                merged[key] = merged.get(key) or value
            elif key == "cpu_s":
                merged["loadgen_cpu_s"] = round(merged.get("loadgen_cpu_s", 0) + value, 2)
            else:
                merged[key] = merged.get(key, 0) + value
    for name, hist in hists.items():
        merged[f"{name}_p50_ms"] = percentile(hist, 0.5)
        merged[f"{name}_p99_ms"] = percentile(hist, 0.99)
        merged[f"{name}_max_ms"] = percentile(hist, 1.0)
        merged[f"{name}_samples"] = sum(hist.values())
    return merged


# ---------------------------------------------------------------------- one size


@contextlib.contextmanager
def target_server(target: str, rooms: int, args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    if target == "roomcast":
        with roomcast_server(rooms, args) as served:
            yield served
    else:
        with socketio_server() as served:
            yield served


def store_writes(url: str | None) -> Counter[float]:
    """The roomcast server's store writes so far (``roomcast_store_append_seconds``, from
    a write's submit to its answer), as the count at or under each bucket bound; empty for
    the anchor."""
    counts: Counter[float] = Counter()
    if url is None:
        return counts
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "roomcast_store_append_seconds_bucket":
                counts[float(sample.labels["le"])] += int(sample.value)
    return counts


def write_latency(before: Counter[float], after: Counter[float]) -> Msg:
    """Percentiles of the store writes in the window, as the bucket bound they fall under:
    every event waits for its write before anyone gets it."""
    bounds = sorted(after)
    counts = [after[b] - before[b] for b in bounds]  # cumulative
    if not counts or counts[-1] == 0:
        return {}
    out: Msg = {"store_writes": counts[-1]}
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        bound = next(b for b, c in zip(bounds, counts, strict=True) if c >= q * counts[-1])
        out[f"store_write_{name}_ms_at_most"] = bound * 1000
    return out


def watch(
    pid: int, loadgens: list[int], start_ns: int, args: argparse.Namespace, http: str | None
) -> Msg:
    """CPU over the measured window (after the warm-up) in cores: the server's (and its
    event loop's thread alone), the load generators', and the rest of the machine's (other
    work sharing it; near 0 when quiet); the largest RSS seen in it; and how long the
    roomcast server's store writes took in it."""
    window_start = start_ns + args.warmup_s * 1e9
    time.sleep(max(window_start - time.monotonic_ns(), 0) / 1e9)
    loop = Path(f"/proc/{pid}/task/{pid}/stat")
    writes = store_writes(http)
    before = [cpu_s(p) for p in (pid, *loadgens)]
    before += [cpu_of_stat(loop), machine_busy(), time.monotonic()]
    rss_max = 0
    window_end = window_start + args.duration_s * 1e9
    while (left := window_end - time.monotonic_ns()) > 0:
        rss_max = max(rss_max, rss_bytes(pid)[0])
        time.sleep(min(left / 1e9, 1.0))
    after = [cpu_s(p) for p in (pid, *loadgens)]
    after += [cpu_of_stat(loop), machine_busy(), time.monotonic()]
    used = [(a - b) / (after[-1] - before[-1]) for a, b in zip(after, before, strict=True)]
    server, loadgen, machine = used[0], sum(used[1:-3]), used[-2]
    return {
        "server_cpu_cores": round(server, 2),
        "server_loop_thread_cores": round(used[-3], 2),
        "loadgen_cpu_cores": round(loadgen, 2),
        "other_load_cores": round(max(machine - server - loadgen, 0.0), 2),
        "server_rss_max_bytes": rss_max,
        **write_latency(writes, store_writes(http)),
    }


def measure(target: str, rooms: int, args: argparse.Namespace) -> Msg:
    """One size on one target: the load generators' results merged, with the server's CPU
    and memory."""
    with target_server(target, rooms, args) as (url, pid):
        procs = start_loadgens(target, url, rooms, args)
        try:
            ready = [read_line(p.stdout, "ready")["connect_s"] for p in procs]
            note(f"{target}: {rooms} rooms connected in {max(ready)} s")
            start_ns = time.monotonic_ns() + 500_000_000
            for proc in procs:
                proc.stdin.write(json.dumps({"cmd": "go", "start_ns": start_ns}) + "\n")
                proc.stdin.flush()
            with py_spy(pid, args.profile if target == "roomcast" else None):
                http = url.replace("ws://", "http://") if target == "roomcast" else None
                server = watch(pid, [p.pid for p in procs], start_ns, args, http)
            results = [read_line(p.stdout, "result")["result"] for p in procs]
            server["server_rss_peak_bytes"] = rss_bytes(pid)[1]
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
    record: Msg = {"bench": "rooms", "target": target, "rooms": rooms, "members": args.members}
    record |= {"connect_s": max(ready), **merge(results), **server}
    record["failed_goals"] = failed_goals(record, target)
    record["goals_met"] = not record["failed_goals"]
    return record


def failed_goals(record: Msg, target: str) -> list[str]:
    """The goals this size missed (the anchor: only delivery and the p99s)."""
    failed = []
    for what in ("messages", "fragments"):
        if record.get(f"{what}_delivered") != record.get(f"{what}_expected"):
            failed.append(f"{what} delivered")
    if record.get("gaps") or record.get("dups") or record.get("behind"):
        failed.append("gap-free")
    if record.get("errors"):
        failed.append("no errors")
    if record.get("answers_complete") != record.get("mentions"):
        failed.append("every answer complete")
    for name in ("message", "spread", "first_token"):
        p99 = record.get(f"{name}_p99_ms")
        if p99 is None or p99 >= GOAL_P99_MS:
            failed.append(f"{name} p99 < {GOAL_P99_MS:g} ms")
    if target == "roomcast" and record["server_rss_max_bytes"] >= GOAL_RSS_BYTES:
        failed.append("server RSS < 1 GB")
    return failed


def refined_size(met: int, missed: int | None, step: int = 10) -> int | None:
    """The size halfway between the largest met and the smallest missed above it, rounded
    to ``step`` rooms; None once they are no more than ``step`` apart (or nothing missed)."""
    if missed is None or missed - met <= step:
        return None
    return max(met + step, round((met + missed) / 2 / step) * step)


def refinements(
    targets: list[str], best: dict[str, int], missed: dict[str, set[int]], left: dict[str, int]
) -> list[tuple[int, str]]:
    """The next size of each target that has refinements ``left`` and a gap to close."""
    sizes = []
    for target in targets:
        above = min((size for size in missed[target] if size > best[target]), default=None)
        size = refined_size(best[target], above)
        if left[target] and size is not None:
            left[target] -= 1
            sizes.append((size, target))
    return sizes


def run(args: argparse.Namespace) -> None:
    if not PEERS_PYTHON.exists():
        raise SystemExit("bench: the load generator needs the peers' environment: make peers-env")
    limit = fd_limit()
    targets = [t for t in args.targets.split(",") if t]
    best: dict[str, int] = dict.fromkeys(targets, 0)
    missed: dict[str, set[int]] = {target: set() for target in targets}  # sizes missed
    sweep = [
        (rooms, target) for rooms in (int(r) for r in args.rooms.split(",")) for target in targets
    ]
    refine = dict.fromkeys(targets, args.refine)
    while sweep or (sweep := refinements(targets, best, missed, refine)):
        rooms, target = sweep.pop(0)
        reason = does_not_fit(target, rooms, args, limit)
        if reason:
            note(f"{target}: {rooms} rooms of {args.members} does not fit: {reason}")
            emit({"bench": "rooms", "target": target, "rooms": rooms, "skipped": reason})
            missed[target].add(rooms)
            continue
        record = measure(target, rooms, args)
        emit(record)
        if record["goals_met"]:
            best[target] = max(best[target], rooms)
        else:
            missed[target].add(rooms)
    summary: Msg = {"bench": "rooms-summary", "members": args.members, "fd_limit": limit}
    summary |= {f"{t}_largest_rooms_meeting_goals": r for t, r in best.items()}
    if best.get("roomcast") and best.get("socketio"):
        summary["ratio_vs_socketio"] = round(best["roomcast"] / best["socketio"], 2)
    summary["goal_ratio_vs_socketio"] = 2.0
    emit(summary)
