"""Time for a client to catch up on messages it missed while detached."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass

from ._common import (
    TIMEOUT_S,
    BenchError,
    CpuSample,
    Msg,
    attach_once,
    emit,
    messages_of,
    note,
    open_client,
    publish_pipelined,
    py_spy,
    running_server,
)

GOAL_S = 1.0
CHANNEL = "bench:catchup"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--missed", type=int, default=10_000, help="messages to catch up on")
    parser.add_argument("--runs", type=int, default=3, help="measurements (then the median)")
    parser.add_argument(
        "--profile", metavar="FILE", help="py-spy record the server into FILE (.svg/.txt/.json)"
    )


@dataclass(frozen=True, slots=True)
class CatchUp:
    seconds: float  # from sending attach to the last missed event
    attached_s: float  # from sending attach to ``attached``
    frames: int


async def catch_up(url: str, epoch: str, from_serial: int, missed: int) -> CatchUp:
    """Attach with ``from_serial`` and ``epoch``; read exactly the ``missed`` events after it."""
    ws = await open_client(url, "bench-catchup")
    try:
        request = {
            "action": "attach",
            "channel": CHANNEL,
            "from_serial": from_serial,
            "epoch": epoch,
            "ref": 1,
        }
        expected, last = from_serial + 1, from_serial + missed
        frames, attached_at = 0, 0.0
        start = time.perf_counter()
        await ws.send(json.dumps(request))
        while expected <= last:
            frame = await asyncio.wait_for(ws.recv(), TIMEOUT_S)
            frames += 1
            for message in messages_of(frame):
                expected = _check(message, expected, last, from_serial)
                if message.get("action") == "attached":
                    attached_at = time.perf_counter()
        end = time.perf_counter()
    finally:
        await ws.close()
    return CatchUp(end - start, attached_at - start, frames)


def _check(message: Msg, expected: int, last: int, from_serial: int) -> int:
    """The next serial expected after ``message``; raises on a gap, duplicate or reload."""
    action = message.get("action")
    if action == "event" and message.get("channel") == CHANNEL:
        if message["serial"] != expected:
            raise BenchError(f"expected serial {expected}, got {message['serial']}")
        return expected + 1
    if action == "attached":
        if not message.get("resumed") or message.get("serial") != last:
            raise BenchError(f"attached should resume {from_serial}..{last}: {message}")
    elif action in ("discontinuity", "error"):
        raise BenchError(f"catch-up failed: {message}")
    return expected


async def _one(url: str, pid: int, missed: int, run: int) -> float:
    # A subscriber learns the epoch and where it is, then goes away.
    attached = await attach_once(url, CHANNEL, "bench-catchup")
    epoch, from_serial = attached["epoch"], attached["serial"]
    published = await publish_pipelined(
        url, pid, CHANNEL, missed, client_prefix="bench-catchup-pub"
    )
    if published.first_serial != from_serial + 1:
        raise BenchError(f"published {published.first_serial}.., expected {from_serial + 1}..")
    before = CpuSample.take(pid)
    result = await catch_up(url, epoch, from_serial, missed)
    emit(
        {
            "bench": "catchup",
            "run": run,
            "missed": missed,
            "seconds": round(result.seconds, 4),
            "goal_s": GOAL_S,
            "attached_s": round(result.attached_s, 4),
            "from_serial": from_serial,
            "frames": result.frames,
            "publish_acks_per_s": round(missed / published.seconds),
            **CpuSample.take(pid).since(before),
        }
    )
    return result.seconds


async def _bench(args: argparse.Namespace, url: str, pid: int) -> None:
    times = []
    with py_spy(pid, args.profile):
        for run in range(1, args.runs + 1):
            note(f"catchup run {run}: {args.missed} missed messages")
            times.append(await _one(url, pid, args.missed, run))
    emit(
        {
            "bench": "catchup",
            "stat": "median",
            "runs": len(times),
            "missed": args.missed,
            "seconds": round(statistics.median(times), 4),
            "goal_s": GOAL_S,
        }
    )


def run(args: argparse.Namespace) -> None:
    with running_server() as (server, pid):
        asyncio.run(_bench(args, server.ws_url, pid))
