"""The picows load generator of ``python -m bench rooms`` and ``python -m bench connections``.

A process of its own in the peers' environment (``.venv-peers``: picows, uvloop), run as
``.venv-peers/bin/python bench/loadgen.py CONFIG_JSON``. It imports nothing of roomcast: it
speaks PROTOCOL.md v1 for roomcast and Engine.IO v4 / Socket.IO v5 text framing for the
socket.io anchor (``bench/node/rooms.mjs``), so both servers are measured by the same client.

It talks to its parent in JSON lines: it prints ``{"ready": ...}`` once every connection is
attached, waits for ``{"cmd": "go", "start_ns": ...}`` on stdin (a ``time.monotonic_ns()``
instant, one clock for every process of the machine), runs the traffic and prints
``{"result": ...}``. Latencies are returned as histograms of 0.1 ms buckets, which the parent
merges exactly. With ``"target": "idle"`` (``python -m bench connections``) the connections
stay idle in their rooms, and resume (resume key, ``from_serial``) when the server goes away;
``{"cmd": "expect", ...}`` waits until each has seen its room's last serial again.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import resource
import sys
import time
from collections import Counter
from typing import Any

import uvloop
from picows import WSListener, WSMsgType, WSTransport, ws_connect

try:
    from orjson import loads
except ImportError:  # the plain json module reads the same frames, a little slower
    from json import loads

BUCKET_NS = 100_000  # histogram resolution: 0.1 ms
AGENT = "bot"
CONNECT_WINDOW = 200  # handshakes in flight at once per process
CUT_SETTLE_S = 2.0  # the drain's last seconds: what was seen before them must arrive by its end


def raise_fd_limit() -> int:
    """The soft file limit raised to the hard one; returns it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def say(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


class Stats:
    """What one process measured: latency histograms and counters."""

    def __init__(self, measure_from: int) -> None:
        self.measure_from = measure_from  # samples of traffic sent before this are not counted
        self.message: Counter[int] = Counter()
        self.first_token: Counter[int] = Counter()
        self.spread: Counter[int] = Counter()
        self.errors = 0
        self.first_error = ""

    def error(self, text: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or text[:300]


class Room:
    """A room's shared facts, filled by whichever of its members (all in this process)
    sees an event first."""

    def __init__(self, index: int, name: str) -> None:
        self.index, self.name = index, name
        self.members: list[Member] = []
        self.person: Member | None = None
        self.sent_t: dict[int, int] = {}  # the person's message (serial, or n) -> send time
        self.answer_t: dict[int, int] = {}  # an answer (serial, or trigger n) -> trigger's time
        self.trigger_of: dict[int, int] = {}  # roomcast: an answer's serial -> its trigger's
        self.receipts: dict[int, list[int]] = {}  # append serial -> [first, last, members]
        self.published = 0  # the person's messages acknowledged (socket.io: sent)
        self.mentions: set[int] = set()  # their serials (socket.io: their n)
        self.completed: set[int] = set()  # triggers whose answer ended complete
        self.cut = 0  # the newest serial a member had seen at the cut (see LoadGen.run)


class Serials:
    """The gap-free check: every event's serial is the previous one + 1."""

    last = gaps = dups = 0

    def sequence(self, serial: int) -> None:
        if serial <= self.last:
            self.dups += 1
        elif serial != self.last + 1:
            self.gaps += 1
        self.last = max(self.last, serial)


class Member(WSListener, Serials):
    """One connection: a member of one room (or, for the anchor, the agent's client)."""

    def __init__(self, lg: LoadGen, room: Room, client_id: str, agent: bool = False) -> None:
        self.lg, self.room, self.client_id, self.agent = lg, room, client_id, agent
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: WSTransport | None = None
        self.messages = 0
        self.started: set[int] = set()  # answers whose first fragment arrived

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def send(self, text: str) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, text.encode())

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.lg.on_text(self, frame.get_payload_as_utf8_text())

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"{self.client_id} closed while joining"))
        elif not self.lg.closing:
            self.lg.stats.error(f"{self.client_id} was disconnected")


def note_fragment(member: Member, key: int, answer: int, recv: int) -> None:
    """One fragment (an append event, or the answer's create with its first words) received:
    its spread over the room, and first token."""
    room, stats = member.room, member.lg.stats
    seen = room.receipts.get(key)
    if seen is None:
        room.receipts[key] = [recv, recv, 1]
    else:
        seen[1] = recv
        seen[2] += 1
    if answer not in member.started:
        member.started.add(answer)
        sent = room.answer_t.get(answer, 0)
        if sent >= stats.measure_from:
            stats.first_token[(recv - sent) // BUCKET_NS] += 1


def note_message(member: Member, key: int, sent: int, recv: int) -> None:
    member.messages += 1
    member.room.sent_t[key] = sent
    if sent >= member.lg.stats.measure_from:
        member.lg.stats.message[(recv - sent) // BUCKET_NS] += 1


class LoadGen:
    """The connections of this process, and the traffic they send."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.url: str = config["url"]
        self.members_per_room: int = config["members"]
        self.rooms = [Room(i, f"bench:r{i}") for i in config["rooms"]]
        self.stats = Stats(0)
        self.closing = False
        self.words: list[str] = [f" w{k}" for k in range(config.get("words", 200))]
        self.streams: list[list[Any]] = []  # the anchor's answers: [agent member, n, next word]

    # ---------------------------------------------------------------- connecting

    async def connect_all(self) -> float:
        """Every member connected and joined, the connects spread over ``ramp_s``."""
        plan: list[tuple[Room, str, bool]] = []
        for room in self.rooms:
            plan += [(room, f"m{room.index}-{k}", False) for k in range(self.members_per_room)]
            if self.config["target"] == "socketio":
                plan.append((room, f"agent{room.index}", True))
        addresses: list[str] = self.config["addresses"]
        per_address = -(-len(plan) // len(addresses))
        window = asyncio.Semaphore(CONNECT_WINDOW)
        started = time.monotonic()
        pace = self.config["ramp_s"] / max(len(plan), 1)

        async def one(k: int, room: Room, client_id: str, agent: bool) -> None:
            await asyncio.sleep(k * pace)
            async with window:
                member = await self.open(room, client_id, addresses[k // per_address], agent)
            if agent:
                return
            room.members.append(member)
            if room.person is None:
                room.person = member

        await asyncio.gather(*(one(k, *item) for k, item in enumerate(plan)))
        return time.monotonic() - started

    async def open(self, room: Room, client_id: str, address: str, agent: bool) -> Member:
        if self.config["target"] == "socketio":
            url = f"{self.url}/socket.io/?EIO=4&transport=websocket"
        else:
            url = f"{self.url}/v1/ws?client_id={client_id}"
        member: Member | None = None

        def factory() -> Member:
            nonlocal member
            member = Member(self, room, client_id, agent)
            return member

        await ws_connect(factory, url, local_addr=(address, 0), websocket_handshake_timeout=30)
        assert member is not None
        await asyncio.wait_for(member.ready, 60)
        return member

    async def greet(self) -> None:
        """roomcast: each person says hello, so that the room exists and the agent joins it
        before anything is measured."""
        if self.config["target"] != "roomcast":
            return
        for room in self.rooms:
            assert room.person is not None
            hello = {"action": "publish", "channel": room.name, "data": "hello", "ref": -1}
            room.person.send(json.dumps(hello))
            await asyncio.sleep(self.config["interval_s"] / max(len(self.rooms), 1) / 4)

    # ---------------------------------------------------------------- frames

    def on_text(self, member: Member, text: str) -> None:
        if self.config["target"] == "socketio":
            self.on_socketio(member, text)
            return
        decoded = loads(text)
        for message in decoded if isinstance(decoded, list) else (decoded,):
            action = message.get("action")
            if action == "event":
                self.on_event(member, message)
            elif action == "connected":
                attach = {"action": "attach", "channel": member.room.name, "ref": 0}
                member.send(json.dumps(attach))
            elif action == "attached" and not member.ready.done():
                member.last = message["serial"]
                member.ready.set_result(None)
            elif action == "ok":
                self.on_ok(member.room, message)
            elif action == "error":
                self.stats.error(json.dumps(message))

    def on_ok(self, room: Room, message: dict[str, Any]) -> None:
        ref = message.get("ref", -1)
        if ref >= 0:  # not the hello
            room.published += 1
            if ref % 2 == 0:
                room.mentions.add(message["serial"])

    def on_event(self, member: Member, event: dict[str, Any]) -> None:
        recv = time.monotonic_ns()
        serial = event["serial"]
        member.sequence(serial)
        kind = event["type"]
        room = member.room
        if kind == "append":
            note_fragment(member, serial, event["msg_serial"], recv)
        elif kind == "create":
            extras = event.get("extras") or {}
            if event["client_id"] == AGENT:
                trigger = extras.get("reply_to", -1)
                room.answer_t[serial] = room.sent_t.get(trigger, 0)
                room.trigger_of[serial] = trigger
                if event.get("data"):  # the answer starts with its first fragment
                    note_fragment(member, serial, serial, recv)
            elif "t" in extras:
                note_message(member, serial, extras["t"], recv)
        elif kind == "update" and event.get("status") == "complete":
            room.completed.add(room.trigger_of.get(event["msg_serial"], -1))

    def on_socketio(self, member: Member, text: str) -> None:
        if text.startswith("42"):
            name, *args = loads(text[2:])
            if name == "ev":
                self.on_socketio_event(member, args[0], args[1])
            elif name == "joined":
                member.ready.set_result(None)
        elif text == "2":
            member.send("3")
        elif text.startswith("0{"):
            member.send("40")
        elif text.startswith("40"):
            member.send(json.dumps(["join", member.room.name]).join(("42", "")))

    def on_socketio_event(self, member: Member, seq: int, data: dict[str, Any]) -> None:
        recv = time.monotonic_ns()
        kind = data["k"]
        room = member.room
        if member.agent:
            if kind == "m" and data["m"]:
                self.start_answer(member, data["n"])
            return
        member.sequence(seq)
        if kind == "f":
            note_fragment(member, seq, data["r"], recv)
        elif kind == "m":
            if data["n"] not in room.answer_t:
                room.answer_t[data["n"]] = data["t"]
            note_message(member, data["n"], data["t"], recv)
        elif kind == "e":
            room.completed.add(data["r"])

    # ---------------------------------------------------------------- traffic

    def publish(self, room: Room, n: int, mention: bool) -> None:
        assert room.person is not None
        text = f"message {n} for @{AGENT}, please answer" if mention else f"message {n}"
        sent = time.monotonic_ns()
        if self.config["target"] == "socketio":
            data = {"k": "m", "n": n, "t": sent, "m": int(mention), "text": text}
            room.person.send("42" + json.dumps(["pub", room.name, data]))
            room.published += 1
            if mention:
                room.mentions.add(n)
            return
        request = {"action": "publish", "channel": room.name, "data": text, "extras": {"t": sent}}
        request["ref"] = 2 * n + (0 if mention else 1)  # on_ok counts the even refs as mentions
        room.person.send(json.dumps(request))

    async def people(self, start_ns: int) -> None:
        """Each room's person publishes every ``interval_s``, the rooms spread over it;
        every second message mentions the agent."""
        interval = self.config["interval_s"] * 1e9
        total = self.config["total_rooms"]
        end = start_ns + (self.config["warmup_s"] + self.config["duration_s"]) * 1e9
        plan = []
        for room in self.rooms:
            phase = room.index * interval / total
            n = 0
            while start_ns + phase + n * interval < end:
                plan.append((start_ns + phase + n * interval, room, n))
                n += 1
        plan.sort(key=lambda item: item[0])
        for at, room, n in plan:
            delay = (at - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            self.publish(room, n, (n + room.index) % 2 == 0)  # half the rooms mention first

    def start_answer(self, agent: Member, n: int) -> None:
        """The anchor's agent: the first fragment at once, then one every fragment_ms."""
        self.send_fragment(agent, n, 0)
        self.streams.append([agent, n, 1])

    def send_fragment(self, agent: Member, n: int, k: int) -> None:
        data = {"k": "f", "r": n, "i": k, "d": self.words[k - 1] if k else "[anchor]"}
        agent.send("42" + json.dumps(["pub", agent.room.name, data]))

    async def anchor_agents(self, until_ns: int) -> None:
        """Every fragment_ms, each answer under way sends its next fragment; after the
        last word, the answer's ``complete``."""
        pace = self.config["fragment_ms"] / 1000
        tick = time.monotonic()
        while time.monotonic_ns() < until_ns:
            tick += pace
            await asyncio.sleep(max(tick - time.monotonic(), 0))
            going = []
            for stream in self.streams:
                agent, n, k = stream
                if k > len(self.words):
                    end = {"k": "e", "r": n}
                    agent.send("42" + json.dumps(["pub", agent.room.name, end]))
                    continue
                self.send_fragment(agent, n, k)
                stream[2] = k + 1
                going.append(stream)
            self.streams = going

    # ---------------------------------------------------------------- the result

    def result(self) -> dict[str, Any]:
        """Every count and histogram, once the traffic has ended and drained."""
        out: dict[str, Any] = {"rooms": len(self.rooms), "connections": 0}
        counts = Counter()
        for room in self.rooms:
            members = room.members
            out["connections"] += len(members)
            cut = room.cut or max(m.last for m in members)
            counts["behind"] += sum(1 for m in members if m.last < cut)
            counts["gaps"] += sum(m.gaps for m in members)
            counts["dups"] += sum(m.dups for m in members)
            counts["messages_delivered"] += sum(m.messages for m in members)
            counts["messages_expected"] += room.published * len(members)
            # The fragments up to the cut: answers may stream on past the drain (queued
            # behind the agent's cap), and one caught mid-fan-out is not a lost one.
            receipts = [r for serial, r in room.receipts.items() if serial <= cut]
            counts["fragments_delivered"] += sum(seen for _, _, seen in receipts)
            counts["fragments_expected"] += len(receipts) * len(members)
            counts["published"] += room.published
            counts["mentions"] += len(room.mentions)
            counts["answers_complete"] += len(room.mentions & room.completed)
            for first, last, seen in receipts:
                if first >= self.stats.measure_from:
                    self.stats.spread[(last - first) // BUCKET_NS] += 1
                    counts["spread_partial"] += seen != len(members)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out |= dict(counts)
        out["errors"], out["first_error"] = self.stats.errors, self.stats.first_error
        out["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
        out["hist"] = {
            "message": dict(self.stats.message),
            "first_token": dict(self.stats.first_token),
            "spread": dict(self.stats.spread),
        }
        return out

    async def run(self) -> None:
        connect_s = await self.connect_all()
        await self.greet()
        # A full collection over the members' state would pause every socket of this process
        # for tens of milliseconds and show up as latency: what is measured is not garbage.
        gc.collect()
        gc.freeze()
        gc.disable()
        say({"ready": sum(len(r.members) for r in self.rooms), "connect_s": round(connect_s, 2)})
        command = json.loads(await asyncio.get_running_loop().run_in_executor(None, input))
        start_ns: int = command["start_ns"]
        self.stats.measure_from = start_ns + int(self.config["warmup_s"] * 1e9)
        traffic_end = start_ns + (self.config["warmup_s"] + self.config["duration_s"]) * 1e9
        until = int(traffic_end + self.config["drain_s"] * 1e9)
        tasks = [asyncio.ensure_future(self.people(start_ns))]
        if self.config["target"] == "socketio":
            tasks.append(asyncio.ensure_future(self.anchor_agents(until)))
        await asyncio.gather(*tasks)
        # The cut: what any member of a room had by then, every member must have by the end.
        settle_s = min(CUT_SETTLE_S, self.config["drain_s"] / 2)
        await asyncio.sleep(max(until - time.monotonic_ns(), 0) / 1e9 - settle_s)
        for room in self.rooms:
            room.cut = max(m.last for m in room.members)
        await asyncio.sleep(max(until - time.monotonic_ns(), 0) / 1e9)
        say({"result": self.result()})
        self.closing = True
        for room in self.rooms:
            for member in room.members:
                if member.transport is not None:
                    member.transport.disconnect()


# ---------------------------------------------------------------------- idle connections


class Client(Serials):
    """One idle member of ``python -m bench connections``, across its reconnects: its room,
    resume key, epoch and the last serial it saw."""

    def __init__(self, client_id: str, index: int, address: str) -> None:
        self.client_id, self.index, self.address = client_id, index, address
        self.room = f"bench:idle{index}"
        self.resume_key = self.epoch = ""
        self.discontinuities = 0
        self.kept_connection = self.replayed = False  # connected.resumed, attached.resumed
        self.attached_ns = 0
        self.listener: IdleListener | None = None


class IdleListener(WSListener):
    def __init__(self, gen: IdleGen, client: Client) -> None:
        self.gen, self.client = gen, client
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        decoded = loads(frame.get_payload_as_utf8_text())
        client = self.client
        for message in decoded if isinstance(decoded, list) else (decoded,):
            action = message.get("action")
            if action == "event":
                client.sequence(message["serial"])
            elif action == "connected":
                client.resume_key = message["resume_key"]
                client.kept_connection = message["resumed"]
                attach: dict[str, Any] = {"action": "attach", "channel": client.room, "ref": 0}
                if client.epoch:
                    attach |= {"from_serial": client.last, "epoch": client.epoch}
                transport.send(WSMsgType.TEXT, json.dumps(attach).encode())
            elif action == "attached":
                if not client.epoch:
                    client.last = message["serial"]
                client.epoch, client.replayed = message["epoch"], message["resumed"]
                client.attached_ns = time.monotonic_ns()
                if not self.ready.done():  # not given up on (a time-out) meanwhile
                    self.ready.set_result(None)
            elif action == "discontinuity":
                client.discontinuities += 1
            elif action == "error":
                self.gen.errors.append(json.dumps(message)[:300])

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before attached"))
        elif not self.gen.closing:
            self.gen.lost(self.client)


class IdleGen:
    """Idle connections, each attached to one room, that resume when the server goes away."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.closing = False
        self.errors: list[str] = []
        self.reconnecting: set[asyncio.Task[None]] = set()
        self.window = asyncio.Semaphore(CONNECT_WINDOW)
        addresses, first = config["addresses"], config["first"]
        per_address = -(-config["count"] // len(addresses))
        self.clients = [
            Client(f"i{first + k}", (first + k) % config["rooms"], addresses[k // per_address])
            for k in range(config["count"])
        ]

    async def open(self, client: Client) -> None:
        url = f"{self.config['url']}/v1/ws?client_id={client.client_id}"
        if client.resume_key:
            url += f"&resume={client.resume_key}"
        async with self.window:
            transport, listener = await ws_connect(
                lambda: IdleListener(self, client),
                url,
                local_addr=(client.address, 0),
                websocket_handshake_timeout=30,
            )
            try:
                await asyncio.wait_for(listener.ready, 30)
            except BaseException:
                transport.disconnect()  # a retry must not leave this one open
                raise
        client.listener = listener

    def lost(self, client: Client) -> None:
        task = asyncio.ensure_future(self.reopen(client))
        self.reconnecting.add(task)
        task.add_done_callback(self.reconnecting.discard)

    async def reopen(self, client: Client) -> None:
        """(Re)connect, with the resume key and from the last serial once it has them,
        retrying with a jittered backoff (0.1 s doubling to 1 s) while the server is away."""
        delay = 0.1
        while not self.closing:
            await asyncio.sleep(delay * random.random())
            try:
                await self.open(client)
                return
            except Exception:  # refused, reset, or a failed upgrade: the server is away
                delay = min(delay * 2, 1.0)

    async def caught_up(self, serials: list[int], since_ns: int) -> dict[str, Any]:
        """Wait until every client re-attached after ``since_ns`` and saw its room's serial
        (or the time-out); then what was seen."""

        def done(c: Client) -> bool:
            return c.attached_ns > since_ns and c.last >= serials[c.index]

        for _ in range(int(self.config["timeout_s"] * 20)):
            if all(done(c) for c in self.clients):
                break
            await asyncio.sleep(0.05)
        caught = time.monotonic_ns()
        return {
            "clients": len(self.clients),
            "reattached": sum(c.attached_ns > since_ns for c in self.clients),
            "caught_up": sum(done(c) for c in self.clients),
            "last_attach_ns": max(c.attached_ns for c in self.clients),
            "caught_up_ns": caught,
            "kept_connection": sum(c.kept_connection for c in self.clients),
            "replayed": sum(c.replayed for c in self.clients),
            "gaps": sum(c.gaps for c in self.clients),
            "dups": sum(c.dups for c in self.clients),
            "discontinuities": sum(c.discontinuities for c in self.clients),
            "errors": len(self.errors),
            "first_error": self.errors[0] if self.errors else "",
        }

    async def run(self) -> None:
        started = time.monotonic()
        await asyncio.gather(*(self.reopen(c) for c in self.clients))
        say({"ready": len(self.clients), "connect_s": round(time.monotonic() - started, 2)})
        gc.collect()
        gc.freeze()
        loop = asyncio.get_running_loop()
        while command := json.loads(await loop.run_in_executor(None, input)):
            if command["cmd"] == "expect":
                say({"resume": await self.caught_up(command["serials"], command["since_ns"])})
            elif command["cmd"] == "stop":
                break
        self.closing = True
        for client in self.clients:
            if client.listener is not None and client.listener.transport is not None:
                client.listener.transport.disconnect()


def main() -> None:
    raise_fd_limit()
    config = json.loads(sys.argv[1])
    uvloop.run((IdleGen if config["target"] == "idle" else LoadGen)(config).run())


if __name__ == "__main__":
    main()
