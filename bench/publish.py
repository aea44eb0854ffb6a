"""Durably acknowledged publishes per second on one channel, pipelined.

Each run is a fresh ``roomcast serve`` on a fresh store: a new SQLite file by default, or,
with ``--store redis://...``, that Redis under a key prefix of the run's own, deleted after
it. One line per measurement, then one summary line per connection count (median, min and
max over the runs): the spread between runs is part of the result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import uuid
from collections.abc import Iterator
from typing import Any

from ._common import Msg, emit, note, process_cpu_s, publish_pipelined, py_spy, running_server

GOAL = 30_000  # acks per second, the median over the runs
CHANNEL = "bench:pub"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=50_000, help="publishes per measurement")
    parser.add_argument(
        "--connections",
        default="1",
        help="comma-separated connection counts, one measurement each per run",
    )
    parser.add_argument("--batch", type=int, default=100, help="requests per frame")
    parser.add_argument("--window", type=int, default=2000, help="unacknowledged requests")
    parser.add_argument("--warmup", type=int, default=2000, help="publishes before measuring")
    parser.add_argument("--runs", type=int, default=11, help="fresh servers, one run each")
    parser.add_argument(
        "--store",
        default=None,
        help="the store: a fresh SQLite file per run (default), or redis://host:port[/db]"
        " (a key prefix per run, deleted after it)",
    )
    parser.add_argument(
        "--profile", metavar="FILE", help="py-spy record the server into FILE (.svg/.txt/.json)"
    )


@contextlib.contextmanager
def _store(url: str | None) -> Iterator[tuple[str | None, int | None]]:
    """The store URL for one run and the pid of its Redis (None on SQLite or when Redis is
    not on this machine); a Redis prefix's keys are deleted afterwards."""
    if url is None or not url.startswith("redis"):
        yield url, None
        return
    import redis

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url)
    try:
        pid: int | None = int(client.info("server")["process_id"])
        try:
            process_cpu_s(int(client.info("server")["process_id"]))
        except OSError:
            pid = None  # another machine's Redis: its CPU is not ours to read
        sep = "&" if "?" in url else "?"
        yield f"{url}{sep}prefix={prefix}", pid
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        client.close()


async def _measure(
    args: argparse.Namespace, url: str, pid: int, redis_pid: int | None, run: int
) -> list[Msg]:
    counts = [int(c) for c in args.connections.split(",") if c.strip()]
    if args.warmup:
        await publish_pipelined(url, pid, "bench:warmup", args.warmup, client_prefix="warmup")
    records = []
    for connections in counts:
        note(f"publish run {run}: {args.messages} messages over {connections} connection(s)")
        redis_before = None if redis_pid is None else process_cpu_s(redis_pid)
        measured = await publish_pipelined(
            url,
            pid,
            CHANNEL,
            args.messages,
            connections=connections,
            batch=args.batch,
            window=args.window,
        )
        rate = args.messages / measured.seconds
        record: Msg = {
            "bench": "publish",
            "run": run,
            "store": "sqlite" if args.store is None else args.store.split(":", 1)[0],
            "connections": connections,
            "messages": args.messages,
            "seconds": round(measured.seconds, 3),
            "acks_per_s": round(rate),
            "goal": GOAL,
            "ratio": round(rate / GOAL, 3),
            "batch": args.batch,
            "window": args.window,
            "serials": [measured.first_serial, measured.last_serial],
            **measured.cpu,
            "server_us_per_publish": round(measured.cpu["server_cpu_s"] / args.messages * 1e6, 1),
        }
        if redis_pid is not None and redis_before is not None:
            redis_s = process_cpu_s(redis_pid) - redis_before
            record["redis_cpu_s"] = round(redis_s, 3)
            # Redis is neither the server nor this process, but it is part of the work.
            other = record["other_load_cores"] - redis_s / measured.seconds
            record["other_load_cores"] = round(max(other, 0.0), 2)
            record["redis_us_per_publish"] = round(redis_s / args.messages * 1e6, 1)
        emit(record)
        records.append(record)
    return records


def _summary(records: list[Msg]) -> Msg:
    rates = [r["acks_per_s"] for r in records]
    cpu = [r["server_us_per_publish"] for r in records]
    first = records[0]
    summary: dict[str, Any] = {
        "bench": "publish",
        "stat": "summary",
        "store": first["store"],
        "connections": first["connections"],
        "runs": len(records),
        "median_acks_per_s": round(statistics.median(rates)),
        "min_acks_per_s": min(rates),
        "max_acks_per_s": max(rates),
        "goal": GOAL,
        "median_server_us_per_publish": round(statistics.median(cpu), 1),
        "min_server_us_per_publish": min(cpu),
        "max_server_us_per_publish": max(cpu),
        "median_other_load_cores": round(
            statistics.median(r["other_load_cores"] for r in records), 2
        ),
    }
    if "redis_us_per_publish" in first:
        redis_cpu = [r["redis_us_per_publish"] for r in records]
        summary["median_redis_us_per_publish"] = round(statistics.median(redis_cpu), 1)
    return summary


def run(args: argparse.Namespace) -> None:
    records: list[Msg] = []
    for number in range(1, args.runs + 1):
        with _store(args.store) as (store, redis_pid), running_server(store) as (server, pid):
            # One profile, of the first run: py-spy's own CPU would slow every later one.
            with py_spy(pid, args.profile if number == 1 else None):
                records += asyncio.run(_measure(args, server.ws_url, pid, redis_pid, number))
    by_count: dict[int, list[Msg]] = {}
    for record in records:
        by_count.setdefault(record["connections"], []).append(record)
    for group in by_count.values():
        emit(_summary(group))
