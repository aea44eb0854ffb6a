"""Agent runtime overhead: from a trigger's publish to the answer's first token at a subscriber.

A server runs one agent (``bot``, policy ``mention``) whose scripted provider answers at once
(no delay: its own time to first token is zero), so what is measured is the runtime: seeing
the trigger, claiming it, reading the context (history, live objects), publishing the
streamed message and its first append, and the fan-out to a subscriber. ``--rooms`` rooms
are active at once, each with a person who asks every ``--interval-ms`` (1 s; the rooms are
spread over it) and a subscriber that notes when the first token arrives. Goal: p99 < 10 ms.
``--interval-ms 0`` asks again as soon as an answer ended: that measures the runtime's
throughput (latency is then mostly queueing), not its overhead.

There is no peer for this one: python-socketio and a websockets loop have no agents. The
same run also reports the bare publish → delivery time in those rooms (no agent involved),
so the agent's share can be read off directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection

from roomcast.testing import ServerProcess

from ._common import SERVER_ENV, BenchError, CpuSample, emit, messages_of, note, open_client
from .stream import percentile

AGENTS = """
[[agents]]
name = "bot"
provider = "scripted"
model = "scripted"
rooms = ["bench:*"]
policy = "mention"
script = "{script}"
"""
SCRIPT = """
delay_ms = 0
[[replies]]
text = "Here is a short answer of a few words."
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rooms", type=int, default=20, help="Rooms asking at once.")
    parser.add_argument("--questions", type=int, default=25, help="Questions per room.")
    parser.add_argument("--warmup", type=int, default=3, help="Questions per room not counted.")
    parser.add_argument(
        "--interval-ms",
        type=float,
        default=1000,
        help="Each room asks this often (0: the next question as soon as the answer ended, "
        "which measures saturation, not overhead).",
    )


async def _attach(ws: ClientConnection, channel: str) -> None:
    await ws.send(json.dumps({"action": "attach", "channel": channel, "ref": 1}))
    while True:
        for message in messages_of(await asyncio.wait_for(ws.recv(), 10)):
            if message.get("action") == "attached":
                return
            if message.get("action") == "error":
                raise BenchError(f"attach refused: {message}")


async def _room(url: str, index: int, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """One room: returns (trigger → first token, trigger → its own delivery) in ms."""
    channel = f"bench:{index}"
    asker = await open_client(url, f"asker{index}")
    watcher = await open_client(url, f"watcher{index}")
    await _attach(watcher, channel)
    first_token: list[float] = []
    delivered: list[float] = []
    try:
        await asyncio.sleep(index * args.interval_ms / 1000 / args.rooms)  # spread the rooms
        for number in range(args.warmup + args.questions):
            sent = time.perf_counter()
            request = {"action": "publish", "channel": channel, "data": f"@bot q{number}"}
            await asker.send(json.dumps({**request, "ref": number + 10}))
            trigger: int | None = None
            answer: int | None = None
            got_token = got_own = 0.0
            ended = False
            while not ended:
                for event in messages_of(await asyncio.wait_for(watcher.recv(), 30)):
                    if event.get("action") != "event":
                        continue
                    now = time.perf_counter()
                    kind = event["type"]
                    if kind == "create" and event["client_id"] == f"asker{index}":
                        trigger, got_own = event["serial"], now
                    elif kind == "create" and event["client_id"] == "bot":
                        if event.get("extras", {}).get("reply_to") == trigger:
                            answer = event["serial"]
                    elif kind == "append" and event.get("msg_serial") == answer and not got_token:
                        got_token = now
                    elif kind == "update" and event.get("msg_serial") == answer:
                        ended = event.get("status") is not None
            if number >= args.warmup:
                first_token.append((got_token - sent) * 1000)
                delivered.append((got_own - sent) * 1000)
            pause = args.interval_ms / 1000 - (time.perf_counter() - sent)
            if pause > 0:
                await asyncio.sleep(pause)
    finally:
        await asker.close()
        await watcher.close()
    return first_token, delivered


async def _run(args: argparse.Namespace, server: ServerProcess, pid: int) -> None:
    url = server.ws_url
    await asyncio.sleep(1.0)  # the agent is attached to meta:channels
    before = CpuSample.take(pid)
    started = time.perf_counter()
    results = await asyncio.gather(*(_room(url, i, args) for i in range(args.rooms)))
    elapsed = time.perf_counter() - started
    tokens = [v for first, _ in results for v in first]
    bare = [v for _, own in results for v in own]
    overhead = [t - b for (first, own) in results for t, b in zip(first, own, strict=True)]
    emit(
        {
            "bench": "agents",
            "rooms": args.rooms,
            "interval_ms": args.interval_ms,
            "questions": len(tokens),
            "first_token_p50_ms": round(percentile(tokens, 0.5), 2),
            "first_token_p99_ms": round(percentile(tokens, 0.99), 2),
            "publish_delivery_p50_ms": round(percentile(bare, 0.5), 2),
            "publish_delivery_p99_ms": round(percentile(bare, 0.99), 2),
            "agent_overhead_p50_ms": round(percentile(overhead, 0.5), 2),
            "agent_overhead_p99_ms": round(percentile(overhead, 0.99), 2),
            "provider_ttft_ms": 0,
            "goal_p99_ms": 10,
            "answers_per_s": round(len(tokens) / elapsed, 1),
            **CpuSample.take(pid).since(before),
        }
    )


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="roomcast-bench-agents-") as folder:
        script = Path(folder) / "script.toml"
        script.write_text(SCRIPT)
        agents = Path(folder) / "agents.toml"
        agents.write_text(AGENTS.replace("{script}", str(script)))
        env: dict[str, Any] = {**SERVER_ENV, "ROOMCAST_APPEND_RATE": "0"}
        with ServerProcess(env=env, args=["--agents", str(agents)]) as server:
            assert server.proc is not None
            note(f"server pid {server.proc.pid}, {args.rooms} rooms")
            asyncio.run(_run(args, server, server.proc.pid))
