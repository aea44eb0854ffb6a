"""Agents in every room (docs/agents.md "Many rooms"): an agent whose pattern matches a
thousand rooms answers in all of them, on one connection (an API key's channel limit),
attaches the active ones, detaches idle ones and comes back, without missing a trigger, when
the server hints that a room is active again. Real servers and ``roomcast agents`` workers.
"""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from polling import eventually
from roomcast.agents.config import AgentConfig
from roomcast.agents.room import Room, message_at
from roomcast.agents.rooms import AgentRooms
from roomcast.client import Backoff, Client, Discontinuity, Event, connect
from roomcast.protocol.messages import SignalEvent
from roomcast.testing import AgentsProcess, ServerProcess, WireClient

KEY = "workers:" + "r" * 32
ROOMS = 1100  # more than one page of GET /v1/channels (1000)
ENV = {
    "ROOMCAST_KEYS": KEY,
    "ROOMCAST_ALLOW_ANONYMOUS": "true",
    "ROOMCAST_PUBLISH_RATE": "0",
    "ROOMCAST_ACTIVITY_HINT_S": "1",
    "ROOMCAST_LOG_LEVEL": "info",
}
SCRIPT = """
[[replies]]
text = "On it."
"""
AGENTS = """
[[agents]]
name = "helper"
provider = "scripted"
model = "scripted"
rooms = ["{prefix}:*"]
script = "{script}"
idle_detach_s = 2
"""


def agents_file(folder: Path, prefix: str, script: str = SCRIPT, more: str = "") -> Path:
    script_path = folder / "script.toml"
    script_path.write_text(textwrap.dedent(script))
    path = folder / "agents.toml"
    path.write_text(textwrap.dedent(AGENTS).format(prefix=prefix, script=script_path) + more)
    return path


@pytest.fixture
def prefix() -> str:
    return f"many{uuid.uuid4().hex[:6]}"


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    with ServerProcess(store="memory://", env=ENV, args=["--agents", "none"]) as proc:
        yield proc


def start_worker(server: ServerProcess, agents: Path) -> AgentsProcess:
    """``roomcast agents`` in a subprocess, a worker of ``server``."""
    return AgentsProcess(server.url, agents, KEY).start()


class Answers:
    """A key holder's connection attached to every room: the answers it sees end."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.complete: dict[str, list[int]] = {}  # room → msg_serials of finished answers

    async def watch(self, rooms: list[str]) -> None:
        await asyncio.gather(*(self.client.channels.get(r).subscribe(self._event) for r in rooms))

    def _event(self, event: Event) -> None:
        if event.type == "update" and event.status == "complete" and event.client_id == "helper":
            assert isinstance(event.msg_serial, int)
            self.complete.setdefault(event.channel, []).append(event.msg_serial)

    async def in_every(self, rooms: list[str], worker: AgentsProcess, within: float) -> None:
        """Until every one of ``rooms`` has a finished answer; else a failure that says
        where none came, with the worker's log."""
        try:
            async with asyncio.timeout(within):
                while self.missing(rooms):  # noqa: ASYNC110
                    await asyncio.sleep(0.2)  # a plain dict, filled by the subscriptions
        except TimeoutError:
            missing = self.missing(rooms)
            raise AssertionError(
                f"no answer in {len(missing)} rooms ({missing[:3]}...); "
                f"the worker's log ends:\n{worker.output()[-4000:]}"
            ) from None

    def missing(self, rooms: list[str]) -> list[str]:
        return [r for r in rooms if not self.complete.get(r)]


async def channels(server: ServerProcess, prefix: str) -> dict[str, int]:
    """Every channel of ``prefix`` and its occupancy, read page by page with ``after``."""
    found: dict[str, int] = {}
    after = ""
    async with httpx.AsyncClient(base_url=server.url) as http:
        while True:
            params = {"prefix": f"{prefix}:", "limit": 1000, "after": after}
            items = (await http.get("/v1/channels", params=params)).json()["items"]
            found.update((i["channel"], i["occupancy"]) for i in items)
            if len(items) < 1000:
                return found
            after = items[-1]["channel"]


async def until_detached(server: ServerProcess, prefix: str, within: float = 60) -> None:
    async with asyncio.timeout(within):
        while any((await channels(server, prefix)).values()):  # noqa: ASYNC110 - over HTTP
            await asyncio.sleep(0.5)


async def test_a_worker_answers_in_1100_rooms_then_detaches_idle_ones_and_comes_back(
    server: ServerProcess, prefix: str, tmp_path: Path
) -> None:
    rooms = [f"{prefix}:{i:04d}" for i in range(ROOMS)]
    async with connect(server.url, client_id="alice") as alice:
        await asyncio.gather(*(alice.channels.get(r).publish("hello") for r in rooms))
    listed = await channels(server, prefix)
    assert sorted(listed) == rooms  # two pages

    worker = start_worker(server, agents_file(tmp_path, prefix))
    try:
        # It lists them all; it attaches those with an event in the last seconds now, the
        # others when they get active. Either way it answers in each, on one connection.
        await worker.logged(f"of its {ROOMS} rooms")
        async with connect(server.url, client_id="watcher", key=KEY) as watcher:
            answers = Answers(watcher)
            await answers.watch(rooms)
            async with connect(server.url, client_id="bob") as bob:
                await asyncio.gather(*(bob.channels.get(r).publish("@helper hi") for r in rooms))
            await answers.in_every(rooms, worker, within=120)
        assert all(len(answers.complete[r]) == 1 for r in rooms)

        # Nobody is here and nothing happens: the worker detaches every room.
        await until_detached(server, prefix)
        async with httpx.AsyncClient(base_url=server.url) as http:
            members = (await http.get(f"/v1/channels/{rooms[7]}/presence")).json()["items"]
        assert members == []

        # Activity brings it back: a message it does not answer, then a mention, in 100
        # rooms; it resumes from the serial it saw last, so it answers each mention once.
        again = rooms[::11]
        async with connect(server.url, client_id="watcher", key=KEY) as watcher:
            answers = Answers(watcher)
            await answers.watch(again)
            async with connect(server.url, client_id="carol") as carol:
                for r in again:
                    await carol.channels.get(r).publish("anyone here?")
                await asyncio.gather(
                    *(carol.channels.get(r).publish("@helper are you?") for r in again)
                )
            await answers.in_every(again, worker, within=60)
            await asyncio.sleep(1.0)  # a second answer would have come by now
        assert all(len(answers.complete[r]) == 1 for r in again)
        assert "Traceback" not in worker.output()
    finally:
        worker.close()


async def test_a_person_entering_an_idle_room_brings_its_agent_back_to_presence(
    server: ServerProcess, prefix: str, tmp_path: Path
) -> None:
    channel = f"{prefix}:lobby"
    async with connect(server.url, client_id="alice") as alice:
        await alice.channels.get(channel).publish("hello")
    worker = start_worker(server, agents_file(tmp_path, prefix))
    try:
        await worker.logged("of its 1 rooms")
        await until_detached(server, prefix)
        async with connect(server.url, client_id="dana") as dana:
            lobby = dana.channels.get(channel)
            await lobby.presence.enter({"name": "Dana"})
            async with asyncio.timeout(30):
                while "helper" not in [m.client_id for m in await lobby.presence.members()]:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)  # a member list, kept by the client
            # While a person is here the agent stays, however quiet the room is.
            await asyncio.sleep(5)
            assert "helper" in [m.client_id for m in await lobby.presence.members()]
    finally:
        worker.close()


async def test_a_mention_right_after_entering_a_new_room_is_answered(
    server: ServerProcess, prefix: str, tmp_path: Path
) -> None:
    """The agent attaches from the serial the server's signal names, so a message posted
    before its attach arrives is replayed to it, not missed."""
    rooms = [f"{prefix}:new{i}" for i in range(60)]
    worker = start_worker(server, agents_file(tmp_path, prefix))
    try:
        await worker.logged("agent helper attached 0 of its 0 rooms")
        async with connect(server.url, client_id="watcher", key=KEY) as watcher:
            answers = Answers(watcher)
            await answers.watch(rooms)
            async with connect(server.url, client_id="erin") as erin:

                async def enter_and_ask(name: str) -> None:
                    await erin.channels.get(name).presence.enter({"name": "Erin"})
                    await erin.channels.get(name).publish("@helper quick question")

                await asyncio.gather(*(enter_and_ask(r) for r in rooms))
                await answers.in_every(rooms, worker, within=60)
        assert all(len(answers.complete[r]) == 1 for r in rooms)
    finally:
        worker.close()


class Streaming:
    """How many of helper's answers stream at once, as a key holder attached to the rooms
    sees them: the most at any moment, and the answers that ended complete."""

    def __init__(self, rooms: int) -> None:
        self.now: set[tuple[str, int]] = set()
        self.most = 0
        self.complete: set[tuple[str, int]] = set()
        self.rooms = rooms
        self.all_complete = asyncio.Event()  # an answer in every room ended complete

    def event(self, event: Event) -> None:
        if event.client_id != "helper":
            return
        if event.type == "create" and event.streaming is True:
            self.now.add((event.channel, event.serial))  # a message's serial is its create's
            self.most = max(self.most, len(self.now))
        elif event.type == "update" and event.status in ("complete", "failed", "cancelled"):
            key = (event.channel, event.msg_serial)
            self.now.discard(key)
            if event.status == "complete":
                self.complete.add(key)
                if len(self.complete) >= self.rooms:
                    self.all_complete.set()


SLOW_SCRIPT = """
delay_ms = 60
[[replies]]
text = "one two three four five six seven eight nine ten"
"""


async def test_answers_beyond_max_concurrent_answers_wait_their_turn(
    server: ServerProcess, prefix: str, tmp_path: Path
) -> None:
    """Eight rooms ask at once; the agent streams two answers at a time, and every room
    gets its answer, complete."""
    rooms = [f"{prefix}:busy{i}" for i in range(8)]
    agents = agents_file(tmp_path, prefix, SLOW_SCRIPT, "max_concurrent_answers = 2\n")
    worker = start_worker(server, agents)
    try:
        await worker.logged("agent helper attached 0 of its 0 rooms")
        streaming = Streaming(len(rooms))
        # Every change of the agent's presence, as the rooms show it.
        presence = await WireClient.connect(server.ws_url, client_id="presence", key=KEY)
        for room in rooms:
            await presence.request("attach", channel=room)
        async with connect(server.url, client_id="watcher", key=KEY) as watcher:
            await asyncio.gather(
                *(watcher.channels.get(r).subscribe(streaming.event) for r in rooms)
            )
            async with connect(server.url, client_id="frank") as frank:
                await asyncio.gather(
                    *(frank.channels.get(r).publish("@helper busy day?") for r in rooms)
                )
            await asyncio.wait_for(streaming.all_complete.wait(), 60)
        assert sorted(channel for channel, _ in streaming.complete) == rooms
        assert streaming.most == 2
        shown = {
            shown_status(m["data"])
            for m in await presence.quiet(0.5)
            if m["action"] == "presence" and m["client_id"] == "helper" and m["data"]
        }
        await presence.close()
        # Those waiting their turn say so, rather than idle while someone waits.
        assert {"thinking (queued)", "thinking", "streaming"} <= shown
    finally:
        worker.close()


def shown_status(data: Any) -> str:
    return str(data["status"]) + (" (queued)" if data.get("queued") else "")


class Tasks:
    """What an :class:`AgentRooms` spawns, kept to be awaited."""

    def __init__(self) -> None:
        self.running: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any, **_: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.running.add(task)
        return task


def rooms_of_helper(
    client: Client,
    prefix: str,
    tasks: Tasks,
    kind: type[AgentRooms] = AgentRooms,
    on_event: Callable[[Room, Event], None] = lambda *_: None,
) -> AgentRooms:
    """The rooms of the scripted agent ``helper`` (every room under ``prefix``) on
    ``client``, as ``start()`` sets them up before it lists the rooms."""
    rooms = kind(
        AgentConfig(name="helper", provider="scripted", model="scripted", rooms=(f"{prefix}:*",)),
        on_event=on_event,
        on_regenerate=lambda *_: None,
        spawn=tasks.spawn,
        read=lambda name, serial: message_at(client.channels.get(name), serial),
    )
    rooms.client = client
    return rooms


async def test_a_room_woken_while_the_agent_starts_is_read_from_before_its_last_message(
    server: ServerProcess, prefix: str
) -> None:
    """A message posted just before the agent listened, then somebody attaching the room
    (``channel.occupied`` names the serial after that message) while the agent starts: the
    agent still reads the message, as it reads the rooms it lists at start."""
    channel = f"{prefix}:racing"
    async with connect(server.url, client_id="hana") as hana:
        await hana.channels.get(channel).publish("@helper are you up yet?")
    seen: list[Event] = []
    tasks = Tasks()
    async with connect(server.url, client_id="helper", key=KEY) as client:
        rooms = rooms_of_helper(client, prefix, tasks, on_event=lambda _, e: seen.append(e))
        rooms._on_meta_signal(
            SignalEvent(
                channel="meta:channels",
                client_id=None,
                name="channel.occupied",
                data={"channel": channel, "serial": 1},
            )
        )
        await asyncio.gather(*tasks.running)
        assert [(e.serial, e.data) for e in seen] == [(1, "@helper are you up yet?")]


async def test_after_a_gap_the_room_is_attached_again_to_keep_its_latest_messages(
    server: ServerProcess, prefix: str
) -> None:
    """The server restarts with an empty store (a new epoch): the agent's events have a gap,
    so it drops the room's latest messages and attaches the room again with a ``rewind``,
    and keeps them from there as history has them."""
    channel = f"{prefix}:restarted"
    tasks = Tasks()
    quick = Backoff(initial=0.05, maximum=0.5)
    async with (
        connect(server.url, client_id="helper", key=KEY, backoff=quick) as client,
        connect(server.url, client_id="hana", backoff=quick) as hana,
    ):
        rooms = rooms_of_helper(client, prefix, tasks)
        room = await rooms.watch(channel, None)
        assert room is not None
        said = hana.channels.get(channel)
        await said.publish("before the restart")
        await eventually(lambda: room.recent.serial == 1, what="the first message kept")

        epoch = room.channel.epoch
        server.stop()
        server.start()  # the same port, an empty memory store: a new epoch
        await eventually(lambda: room.channel.epoch not in (None, epoch), what="the new epoch")
        await said.publish("after it")
        await said.publish("@helper still there?")
        await eventually(lambda: room.recent.serial == 2, what="kept again", within=15)
        kept = await room.recent.latest(3)
        assert kept is not None
        [page] = [page async for page in said.history(limit=10)]
        assert [(m.msg_serial, m.data) for m in kept] == [
            (m.msg_serial, m.data) for m in page.messages
        ]
        assert [m.data for m in kept] == ["after it", "@helper still there?"]
    await asyncio.gather(*tasks.running)


async def test_a_room_being_kept_again_when_the_client_closes_ends_quietly(
    server: ServerProcess, prefix: str
) -> None:
    """The attach that keeps a room's messages again after a gap finds the agent's client
    closed (the agent stops): the room keeps nothing, and nothing fails."""
    tasks = Tasks()
    async with connect(server.url, client_id="helper", key=KEY) as client:
        rooms = rooms_of_helper(client, prefix, tasks)
        room = await rooms.watch(f"{prefix}:closing", None)
        assert room is not None and room.recent.serial is not None
    gap = Discontinuity(room.channel.name, "events were removed", room.channel.epoch, 7)
    rooms._gap(room, gap)  # not at the snapshot of its attach (serial 0)
    [keeping] = tasks.running
    await asyncio.wait_for(asyncio.wait([keeping]), 10)
    assert keeping.exception() is None
    assert room.recent.serial is None and not room.recent.expecting


class GapWhileJoining(AgentRooms):
    """Events are lost right after a room's first attach, while the agent enters it."""

    async def _follow_membership(self, room: Room) -> None:
        if not room.ready.is_set():
            self._gap(room, Discontinuity(room.channel.name, "events were removed", None, 7))
        await super()._follow_membership(room)


async def test_a_gap_right_after_the_first_attach_keeps_the_room_again(
    server: ServerProcess, prefix: str
) -> None:
    tasks = Tasks()
    channel = f"{prefix}:joining"
    async with (
        connect(server.url, client_id="helper", key=KEY) as client,
        connect(server.url, client_id="hana") as hana,
    ):
        await hana.channels.get(channel).publish("hello")
        rooms = rooms_of_helper(client, prefix, tasks, GapWhileJoining)
        room = await rooms.watch(channel, None)
        assert room is not None
        await asyncio.wait_for(asyncio.gather(*tasks.running), 10)
        kept = await room.recent.latest(2)
        assert kept is not None and [m.data for m in kept] == ["hello"]
