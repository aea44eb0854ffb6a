"""A token stream into a crowded channel: append-to-delivery latency, events and frames per
fragment with the rollup on and off, and the cost of a late join to a long message.

One author appends ``--rate`` fragments per second (default 100, a fast model) to one
streamed message on a channel with ``--subscribers`` raw WebSocket subscribers (default
500). Each fragment carries its index; every subscriber timestamps each event as it reads it,
so the latency is from the moment the author sent the append to the moment a subscriber had
it (merged or not). ``events_per_fragment`` counts the append events the log got, and
``frames_per_fragment`` the WebSocket frames each subscriber read for them. Then a
``--late-fragments`` long message (rollup off, so one event per fragment) is read by a late
joiner with ``rewind``: it must get one message, not one event per fragment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import time
from typing import Any

from websockets.asyncio.client import ClientConnection

from roomcast.testing import ServerProcess

from ._common import (
    SERVER_ENV,
    BenchError,
    CpuSample,
    Msg,
    emit,
    messages_of,
    note,
    open_client,
)

P99_GOAL_MS = 50.0
EVENTS_PER_FRAGMENT_GOAL = 0.5  # with the default rollup
CHANNEL = "bench:stream"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subscribers", type=int, default=500, help="attached subscribers")
    parser.add_argument("--rate", type=float, default=100.0, help="fragments per second")
    parser.add_argument("--fragments", type=int, default=1000, help="fragments per stream")
    parser.add_argument(
        "--rollups", default="25,0", help="comma-separated rollup_ms values, one run each"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="processes the subscribers are spread over"
    )
    parser.add_argument(
        "--late-fragments", type=int, default=10_000, help="length of the late-join message"
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _subscribe(url: str, channel: str, first: int, count: int, ready: Any) -> Msg:
    """``count`` subscribers that read the channel until its message ends; for each, the
    time (``perf_counter``, the same clock in every process) each fragment reached it."""
    sockets = []
    for i in range(first, first + count):
        ws = await open_client(url, f"sub-{i}")
        await _attach(ws, channel)
        sockets.append(ws)
    ready.send("ready")

    async def read(ws: ClientConnection) -> tuple[dict[int, float], int]:
        arrived: dict[int, float] = {}
        frames = 0  # frames that held at least one append event
        async for frame in ws:
            now = time.perf_counter()
            had_append = False
            for message in messages_of(frame):
                if message.get("action") != "event":
                    continue
                if message["type"] == "append":
                    had_append = True
                    for part in message["data"].split("|")[:-1]:
                        arrived[int(part)] = now
                elif message["type"] == "update":
                    return arrived, frames + had_append
            frames += had_append
        raise BenchError("a subscriber's connection ended before the message did")

    try:
        before = time.process_time()
        results = await asyncio.wait_for(asyncio.gather(*(read(ws) for ws in sockets)), 600)
        cpu = time.process_time() - before
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return {
        "arrived": [sorted(arrived.items()) for arrived, _ in results],
        "frames": sum(frames for _, frames in results),
        "cpu_s": cpu,
    }


def _subscriber_process(url: str, channel: str, first: int, count: int, conn: Any) -> None:
    """A worker process: its share of the subscribers (one Python process cannot read 500
    sockets at this rate without adding its own queueing to the latency)."""
    result = asyncio.run(_subscribe(url, channel, first, count, conn))
    conn.send(result)
    conn.close()


async def _attach(ws: ClientConnection, channel: str, **fields: object) -> tuple[Msg, int, int]:
    """Attach: the ``attached`` reply, the size of the frame that held it, and how many
    replayed events that frame held after it."""
    await ws.send(json.dumps({"action": "attach", "channel": channel, "ref": 1, **fields}))
    while True:
        frame = await asyncio.wait_for(ws.recv(), 60)
        messages = messages_of(frame)
        for i, message in enumerate(messages):
            if message.get("action") == "attached":
                events = sum(1 for m in messages[i + 1 :] if m.get("action") == "event")
                return message, len(frame), events
            if message.get("action") == "error":
                raise BenchError(f"attach refused: {message}")


async def _request(ws: ClientConnection, ref: int, **fields: object) -> Msg:
    await ws.send(json.dumps({"ref": ref, **fields}))
    while True:
        for message in messages_of(await asyncio.wait_for(ws.recv(), 60)):
            if message.get("ref") == ref:
                if message.get("action") == "error":
                    raise BenchError(f"refused: {message}")
                return message


async def _start_subscribers(
    args: argparse.Namespace, url: str, channel: str
) -> list[tuple[Any, Any]]:
    """The subscriber processes, once every subscriber is attached."""
    context = multiprocessing.get_context("spawn")
    per = -(-args.subscribers // args.workers)
    workers = []
    for first in range(0, args.subscribers, per):
        count = min(per, args.subscribers - first)
        parent, child = context.Pipe()
        proc = context.Process(
            target=_subscriber_process, args=(url, channel, first, count, child), daemon=True
        )
        proc.start()
        workers.append((proc, parent))
    for _, parent in workers:
        if await asyncio.to_thread(parent.recv) != "ready":
            raise BenchError("a subscriber process did not get ready")
    return workers


async def _author(
    args: argparse.Namespace, url: str, pid: int, channel: str
) -> tuple[list[float], list[int], Msg]:
    """Stream ``args.fragments`` appends at ``args.rate``: when each was sent, the serial
    each ``ok`` carried, and the server's CPU meanwhile."""
    author = await open_client(url, "author")
    sent_at: list[float] = []
    acks: list[int] = []
    try:
        created = await _request(
            author, 1, action="publish", channel=channel, data="", streaming=True
        )
        message = {"channel": channel, "msg_serial": created["serial"]}

        async def read_acks() -> None:
            while len(acks) < args.fragments:
                for reply in messages_of(await author.recv()):
                    if reply.get("action") == "error":
                        raise BenchError(f"append refused: {reply}")
                    if reply.get("action") == "ok":
                        acks.append(reply["serial"])

        acking = asyncio.create_task(read_acks())
        before = CpuSample.take(pid)
        start = time.perf_counter()
        for i in range(args.fragments):
            delay = start + i / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at.append(time.perf_counter())
            request = {"action": "append", **message, "data": f"{i}|", "ref": 2 + i}
            await author.send(json.dumps(request))
        await asyncio.wait_for(acking, 60)
        await asyncio.sleep(0.5)  # the last deliveries
        cpu = CpuSample.take(pid).since(before)
        await _request(author, 10**9, action="update", **message, status="complete")
    finally:
        await author.close()
    return sent_at, acks, cpu


async def _stream_run(args: argparse.Namespace, url: str, pid: int, rollup_ms: float) -> None:
    channel = f"{CHANNEL}:{rollup_ms:g}"
    note(f"stream: {args.subscribers} subscribers ({args.workers} processes), rollup {rollup_ms:g}")
    workers = await _start_subscribers(args, url, channel)
    sent_at, acks, cpu = await _author(args, url, pid, channel)
    results = [await asyncio.to_thread(parent.recv) for _, parent in workers]
    for proc, _ in workers:
        proc.join(10)
    events = len(set(acks))
    if sorted(acks) != acks or events != max(acks) - min(acks) + 1:
        raise BenchError("the appends' serials are out of order or have gaps")
    latencies_ms = []
    for result in results:
        for arrived in result["arrived"]:
            if len(arrived) != args.fragments:
                raise BenchError(f"a subscriber got {len(arrived)} of {args.fragments} fragments")
            latencies_ms += [(t - sent_at[i]) * 1000 for i, t in arrived]
    emit(
        {
            "bench": "stream",
            "rollup_ms": rollup_ms,
            "subscribers": args.subscribers,
            "fragments": args.fragments,
            "fragments_per_s": args.rate,
            "p50_ms": round(statistics.median(latencies_ms), 2),
            "p99_ms": round(percentile(latencies_ms, 0.99), 2),
            "max_ms": round(max(latencies_ms), 2),
            "events_per_fragment": round(events / args.fragments, 3),
            "frames_per_fragment": round(
                sum(r["frames"] for r in results) / args.subscribers / args.fragments, 3
            ),
            "p99_goal_ms": P99_GOAL_MS,
            "events_per_fragment_goal": EVENTS_PER_FRAGMENT_GOAL if rollup_ms else None,
            **cpu,
            "subscriber_processes_cpu_s": round(sum(r["cpu_s"] for r in results), 3),
        }
    )


async def _late_join(args: argparse.Namespace, url: str) -> None:
    channel = f"{CHANNEL}:late"
    note(f"late join: streaming a {args.late_fragments}-fragment message")
    author = await open_client(url, "author")
    try:
        created = await _request(
            author, 1, action="publish", channel=channel, data="", streaming=True
        )
        msg_serial = created["serial"]
        for start in range(0, args.late_fragments, 500):
            batch = [
                {
                    "action": "append",
                    "channel": channel,
                    "msg_serial": msg_serial,
                    "data": f"token{i} ",
                    "ref": 2 + i,
                }
                for i in range(start, min(start + 500, args.late_fragments))
            ]
            await author.send(json.dumps(batch))
            await _request(author, 10**8 + start, action="ping")  # replies come in order
        await _request(
            author,
            10**9,
            action="update",
            channel=channel,
            msg_serial=msg_serial,
            status="complete",
        )
    finally:
        await author.close()
    text = "".join(f"token{i} " for i in range(args.late_fragments))
    for how, fields in (("rewind", {"rewind": 1}), ("replay", {"from_serial": 0})):
        joiner = await open_client(url, f"late-{how}")
        try:
            start_t = time.perf_counter()
            attached, size, events = await _attach(joiner, channel, **fields)
            if how == "replay":  # every event after serial 0 follows, one by one
                while events < attached["serial"]:
                    frame = await asyncio.wait_for(joiner.recv(), 60)
                    size += len(frame)
                    events += sum(1 for m in messages_of(frame) if m.get("action") == "event")
            seconds = time.perf_counter() - start_t
        finally:
            await joiner.close()
        record: Msg = {
            "bench": "stream_late_join",
            "how": how,
            "fragments": args.late_fragments,
            "log_events": attached["serial"],
            "seconds": round(seconds, 4),
            "bytes": size,
        }
        if how == "rewind":
            messages = attached["messages"]
            if len(messages) != 1 or messages[0]["data"] != text:
                raise BenchError(f"rewind gave {len(messages)} messages, not the one full text")
            record["messages"] = len(messages)
        else:
            record["events"] = events
        emit(record)


def run(args: argparse.Namespace) -> None:
    for rollup in [float(r) for r in args.rollups.split(",") if r.strip()]:
        env = {
            **SERVER_ENV,
            "ROOMCAST_ROLLUP_MS": f"{rollup:g}",
            "ROOMCAST_OUTBOUND_QUEUE": "100000",
        }
        with ServerProcess(env=env) as server:
            assert server.proc is not None
            asyncio.run(_stream_run(args, server.ws_url, server.proc.pid, rollup))
    env = {**SERVER_ENV, "ROOMCAST_ROLLUP_MS": "0"}
    with ServerProcess(env=env) as server:
        asyncio.run(_late_join(args, server.ws_url))
