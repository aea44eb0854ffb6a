"""The chaos test: SDK clients behind a proxy that resets their connections at random.

20 subscribers (each also in presence) and 3 publishers connect through a
:class:`~chaos_proxy.ChaosProxy` that resets every connection after 0.3-3 s with an RST and
delays each chunk by 0-30 ms; a scripted agent streams answers to the publishers' mentions;
halfway through, the proxy refuses everything for longer than the presence grace period.
Then the proxy calms down and the test checks what a user relies on:

- every acknowledged publish is in history, once;
- every subscriber saw every serial once, in order, with no discontinuity, and the messages
  it rebuilt from its events equal history, the agent's streamed answers included;
- every trigger got one complete answer;
- every subscriber is in presence once while connected, and presence is empty once they
  closed;
- the servers logged no traceback and no ERROR (the ``server_log`` fixture of conftest).

It runs on SQLite (one server) and on Redis (two servers: a reconnect may move a client to
the other node). The verdict never depends on luck: what it waits for, it waits for with a
deadline that only a fault can pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from chaos_proxy import ChaosProxy
from polling import eventually
from roomcast.client import (
    Backoff,
    Channel,
    Client,
    Discontinuity,
    Event,
    Message,
    Subscription,
    connect,
)
from roomcast.protocol.rollup import apply_event, message_from_create
from roomcast.testing import ServerProcess

GRACE_S = 1.5
OUTAGE_S = 3.0  # longer than the grace: members are gone before their clients come back
CHAOS_S = 15.0
SUBSCRIBERS = 20
PUBLISHERS = 3
PUBLISH_EVERY_S = 0.1
MENTION_EVERY = 15  # each publisher's 15th message asks the agent
ENV = {
    "ROOMCAST_PRESENCE_GRACE_S": str(GRACE_S),
    "ROOMCAST_HEARTBEAT_S": "3",
    "ROOMCAST_PUBLISH_RATE": "0",
    "ROOMCAST_STREAM_IDLE_TIMEOUT_S": "20",
    "ROOMCAST_LOG_LEVEL": "warning",
}
AGENTS = """
    [[agents]]
    name = "bot"
    provider = "scripted"
    model = "scripted"
    rooms = ["chaos:*"]
    policy = "mention"
    script = "{script}"
"""
SCRIPT = """
    delay_ms = 15

    [[replies]]
    text = "one two three four five six seven eight nine ten eleven twelve"
"""


@dataclass
class Reader:
    """A subscriber: what it received, through the proxy."""

    client: Client
    subscription: Subscription
    events: list[Event] = field(default_factory=list)
    gaps: list[Discontinuity] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def read(self) -> None:
        try:
            async for event in self.subscription:
                self.events.append(event)
        except Discontinuity as gap:
            self.gaps.append(gap)

    def rebuilt(self) -> list[Message]:
        """The channel's messages as this subscriber's events make them."""
        messages: dict[int, Message] = {}
        for event in self.events:
            if event.type == "create":
                messages[event.serial] = message_from_create(event)
            elif isinstance(event.msg_serial, int) and event.msg_serial in messages:
                messages[event.msg_serial] = apply_event(messages[event.msg_serial], event)
        return [messages[serial] for serial in sorted(messages)]


@dataclass
class Crowd:
    """Everyone behind the proxy, and how often their connections dropped."""

    readers: list[Reader] = field(default_factory=list)
    publishers: list[Client] = field(default_factory=list)
    drops: int = 0

    @property
    def clients(self) -> list[Client]:
        return [r.client for r in self.readers] + self.publishers

    async def join(self, url: str, name: str) -> Client:
        client = await connect(url, client_id=name, backoff=Backoff(initial=0.05, maximum=1.0))
        client.on("disconnected", self._dropped)
        return client

    def _dropped(self, _: object) -> None:
        self.drops += 1


@contextlib.asynccontextmanager
async def crowd_behind(proxy: ChaosProxy, channel: str) -> AsyncIterator[Crowd]:
    """The subscribers (attached, in presence) and the publishers, connected while the
    proxy is calm; closed (cleanly) at the end."""
    crowd = Crowd()
    try:
        for i in range(SUBSCRIBERS):
            client = await crowd.join(proxy.url, f"reader-{i}")
            room = client.channels.get(channel)
            reader = Reader(client, await room.subscribe())
            reader.task = asyncio.create_task(reader.read())
            await room.presence.enter({"n": i})
            crowd.readers.append(reader)
        for i in range(PUBLISHERS):
            crowd.publishers.append(await crowd.join(proxy.url, f"writer-{i}"))
        yield crowd
    finally:
        for client in crowd.clients:
            await client.close()
        for reader in crowd.readers:
            if reader.task is not None:
                await reader.task


async def publish_for(client: Client, channel: str, seconds: float) -> dict[str, int]:
    """Publish every ``PUBLISH_EVERY_S`` for ``seconds``: each message's id → its serial."""
    room = client.channels.get(channel)
    acked: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    count = 0
    while time.monotonic() < deadline:
        count += 1
        text = f"@bot question {count}" if count % MENTION_EVERY == 0 else f"hello {count}"
        message_id = f"{client.client_id}-{count}"
        acked[message_id] = await room.publish(text, id=message_id)
        await asyncio.sleep(PUBLISH_EVERY_S)
    return acked


async def full_history(client: Client, channel: str) -> list[Message]:
    messages: list[Message] = []
    async for page in client.channels.get(channel).history(direction="forwards", limit=1000):
        messages += page.messages
    return messages


def answered(history: list[Message]) -> bool:
    """Every mention has its answer, and nothing is streaming any more."""
    mentions = [m for m in history if isinstance(m.data, str) and m.data.startswith("@bot")]
    answers = [m for m in history if m.client_id == "bot"]
    done = all(m.status != "streaming" for m in history)
    return done and len(answers) == len(mentions)


async def run_chaos(proxy: ChaosProxy, observer: Client) -> dict[str, float]:
    """The whole scenario and its checks; returns the resets, drops and seconds."""
    channel = f"chaos:{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    watch = observer.channels.get(channel)
    await watch.attach()
    async with crowd_behind(proxy, channel) as crowd:
        proxy.unleash()
        publishing = [publish_for(c, channel, CHAOS_S) for c in crowd.publishers]
        outage = _outage_halfway(proxy)
        *acks, _ = await asyncio.gather(*publishing, outage)
        proxy.calm()
        history: list[Message] = []

        async def settled() -> bool:
            nonlocal history
            history = await full_history(observer, channel)
            return answered(history)

        await eventually(settled, 30, "every mention answered")
        async with connect(observer.url, client_id="late") as late:
            head = (await late.channels.get(channel).attach()).serial
        await _check_delivery(crowd, history, head, {k: v for a in acks for k, v in a.items()})
        await _check_presence(crowd, watch)
    await eventually(_no_members(watch), GRACE_S + 3, "presence empty after every client closed")
    return {
        "resets": proxy.resets,
        "reconnects": crowd.drops,
        "seconds": round(time.monotonic() - started, 1),
    }


async def _outage_halfway(proxy: ChaosProxy) -> None:
    await asyncio.sleep(CHAOS_S / 3)
    await proxy.outage(OUTAGE_S)


async def _check_delivery(
    crowd: Crowd, history: list[Message], head: int, acked: dict[str, int]
) -> None:
    by_id: dict[str | None, list[Message]] = {}
    for message in history:
        by_id.setdefault(message.id, []).append(message)
    for message_id, serial in acked.items():
        assert [m.msg_serial for m in by_id.get(message_id, [])] == [serial], message_id
    readers = crowd.readers
    await eventually(
        lambda: all(r.events and r.events[-1].serial >= head for r in readers),
        10,
        "every subscriber reached the head",
    )
    expected = msgspec.to_builtins(history)
    for reader in readers:
        assert reader.gaps == [], reader.client.client_id
        assert [e.serial for e in reader.events] == list(range(1, head + 1))
        assert msgspec.to_builtins(reader.rebuilt()) == expected, reader.client.client_id
    for answer in (m for m in history if m.client_id == "bot"):
        assert answer.status == "complete" and answer.data.endswith("twelve"), answer


async def _check_presence(crowd: Crowd, watch: Channel) -> None:
    """Each subscriber once (the agent is there too, and the publishers never enter)."""
    names = sorted(r.client.client_id or "" for r in crowd.readers)
    seen: list[str] = []

    async def each_once() -> bool:
        nonlocal seen
        members = await watch.presence.members()
        seen = sorted(m.client_id for m in members if m.client_id != "bot")
        return seen == names

    try:
        await eventually(each_once, GRACE_S + 5, "every subscriber in presence once")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; present: {seen}") from None


def _no_members(watch: Channel) -> Callable[[], Awaitable[bool]]:
    async def empty() -> bool:
        return [m for m in await watch.presence.members() if m.client_id != "bot"] == []

    return empty


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def agents_file(tmp_path: Path) -> str:
    script = write(tmp_path / "script.toml", SCRIPT)
    return write(tmp_path / "agents.toml", AGENTS.replace("{script}", script))


async def chaos_against(nodes: list[ServerProcess]) -> dict[str, float]:
    proxy = await ChaosProxy([n.port for n in nodes], seed=random.randrange(1 << 30)).start()
    try:
        async with connect(nodes[0].url, client_id="observer") as observer:
            figures = await run_chaos(proxy, observer)
    finally:
        await proxy.aclose()
    print(f"chaos {nodes[0].store.split(':')[0]}: {figures}")
    return figures


@pytest.mark.timeout(90)
async def test_chaos_on_sqlite(agents_file: str) -> None:
    with ServerProcess(env=ENV, args=["--agents", agents_file]) as server:
        await chaos_against([server])


@pytest.mark.timeout(90)
async def test_chaos_on_redis_with_two_nodes(agents_file: str, redis_store: str) -> None:
    # The agent runs on the first node; the clients reach both through the proxy.
    with (
        ServerProcess(store=redis_store, env=ENV, args=["--agents", agents_file]) as first,
        ServerProcess(store=redis_store, env=ENV) as second,
    ):
        await chaos_against([first, second])
