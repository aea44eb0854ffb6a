"""Server memory while clients that never read ask for large replies (the outbound budget).

Each client sends ``--requests`` ``history`` requests (``limit`` 1000) on a channel of
``--message-bytes`` messages in one frame, then never reads. Without a budget the server
would queue every reply; with one, each such client holds at most ``outbound_bytes`` of
replies plus the one being written, and the socket buffers. Reported: the server's RSS before,
its peak while the clients wait, and after they are gone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from websockets.asyncio.client import ClientConnection, connect

from ._common import Msg, emit, messages_of, note, open_client, running_server
from .peers import rss_kb

CHANNEL = "bench:replies"
PAGE = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 20], help="runs of N")
    parser.add_argument("--requests", type=int, default=100, help="history requests a client")
    parser.add_argument("--message-bytes", type=int, default=4000, help="data of one message")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long they wait")


async def fill(url: str, message_bytes: int) -> int:
    """Publish a page of messages; read one page back: the size of one reply, in bytes."""
    ws = await open_client(url, "bench-writer")
    payload = "x" * message_bytes
    for start in range(0, PAGE, 20):
        batch = [
            {"action": "publish", "channel": CHANNEL, "data": [k, payload]}
            for k in range(start, start + 20)
        ]
        await ws.send(json.dumps(batch))
    await reply_to(ws, {"action": "ping", "ref": 1})  # every publish is stored
    reply = await reply_to(ws, {"action": "history", "channel": CHANNEL, "limit": PAGE, "ref": 2})
    await ws.close()
    return reply


async def reply_to(ws: ClientConnection, request: Msg) -> int:
    """Send ``request``; the size of the frame that answers it."""
    await ws.send(json.dumps(request))
    while True:
        frame = await asyncio.wait_for(ws.recv(), 60)
        if any(m.get("ref") == request["ref"] for m in messages_of(frame)):
            return len(frame)


async def never_reading(url: str, name: str, requests: int) -> ClientConnection:
    """A client that asks for ``requests`` history pages, then reads nothing: its socket
    fills, then the server's queue for it."""
    ws = await connect(f"{url}?client_id={name}", max_size=None, max_queue=1, compression=None)
    asks = [
        {"action": "history", "channel": CHANNEL, "limit": PAGE, "ref": ref}
        for ref in range(1, requests + 1)
    ]
    await ws.send(json.dumps(asks))
    return ws


async def wait_back(pid: int, near_kb: int, seconds: float) -> int:
    """The RSS once it is back within ``near_kb``, or after ``seconds``."""
    for _ in range(int(seconds * 10)):
        if rss_kb(pid) <= near_kb:
            break
        await asyncio.sleep(0.1)
    return rss_kb(pid)


async def measure(url: str, pid: int, clients: int, args: argparse.Namespace) -> Msg:
    before = rss_kb(pid)
    sockets = [await never_reading(url, f"bench-stuck-{k}", args.requests) for k in range(clients)]
    peak, deadline = before, time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        peak = max(peak, rss_kb(pid))
        await asyncio.sleep(0.05)
    for ws in sockets:
        ws.transport.abort()  # a close handshake would wait behind the unread replies
    after = await wait_back(pid, before + 16 * 1024, 30.0)
    return {
        "clients": clients,
        "rss_before_kb": before,
        "rss_peak_kb": peak,
        "growth_kb": peak - before,
        "growth_per_client_kb": (peak - before) // clients,
        "rss_after_kb": after,
    }


def run(args: argparse.Namespace) -> None:
    with running_server() as (server, pid):
        url = server.ws_url
        reply = asyncio.run(fill(url, args.message_bytes))
        note(f"one history reply is {reply} bytes")
        for clients in args.clients:
            record = asyncio.run(measure(url, pid, clients, args))
            emit(
                {
                    "bench": "replies",
                    "requests": args.requests,
                    "reply_bytes": reply,
                    **record,
                }
            )
