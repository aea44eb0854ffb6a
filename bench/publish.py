"""Durably acknowledged publishes per second on one channel, pipelined."""

from __future__ import annotations

import argparse
import asyncio

from ._common import emit, note, publish_pipelined, py_spy, running_server

GOAL = 20_000  # acks per second
CHANNEL = "bench:pub"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=50_000, help="publishes per measurement")
    parser.add_argument(
        "--connections",
        default="1,2,4",
        help="comma-separated connection counts, one measurement each",
    )
    parser.add_argument("--batch", type=int, default=100, help="requests per frame")
    parser.add_argument("--window", type=int, default=2000, help="unacknowledged requests")
    parser.add_argument("--warmup", type=int, default=2000, help="publishes before measuring")
    parser.add_argument(
        "--profile", metavar="FILE", help="py-spy record the server into FILE (.svg/.txt/.json)"
    )


async def _bench(args: argparse.Namespace, url: str, pid: int) -> None:
    counts = [int(c) for c in args.connections.split(",") if c.strip()]
    if args.warmup:
        await publish_pipelined(url, pid, "bench:warmup", args.warmup, client_prefix="warmup")
    with py_spy(pid, args.profile):
        for connections in counts:
            note(f"publish: {args.messages} messages over {connections} connection(s)")
            run = await publish_pipelined(
                url,
                pid,
                CHANNEL,
                args.messages,
                connections=connections,
                batch=args.batch,
                window=args.window,
            )
            rate = args.messages / run.seconds
            emit(
                {
                    "bench": "publish",
                    "connections": connections,
                    "messages": args.messages,
                    "seconds": round(run.seconds, 3),
                    "acks_per_s": round(rate),
                    "goal": GOAL,
                    "ratio": round(rate / GOAL, 3),
                    "batch": args.batch,
                    "window": args.window,
                    "serials": [run.first_serial, run.last_serial],
                    **run.cpu,
                }
            )


def run(args: argparse.Namespace) -> None:
    with running_server() as (server, pid):
        asyncio.run(_bench(args, server.ws_url, pid))
