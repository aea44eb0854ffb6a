"""A room's latest messages as an agent keeps them from its events: on a real node, after
every kind of change, they are what a history read returns (docs/agents.md "Context")."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace

from inproc_node import running_node
from polling import eventually
from roomcast.agents.context import CONTEXT_TOKENS, select
from roomcast.agents.recent import KEPT_MESSAGES, KEPT_TOKENS, RecentMessages
from roomcast.agents.room import latest_messages, message_at
from roomcast.agents.rooms import WATCHED_TYPES
from roomcast.client import Channel, Client, Message, MessageStream, connect
from roomcast.protocol.messages import Attached, Event
from roomcast.server.in_process import InProcessDialer

URL = "http://in-process.invalid"  # never reached: the dial stays in this process


@dataclass
class Reader:
    """What an agent does in a room: a subscription without appends, kept messages."""

    channel: Channel
    failing: int = 0  # reads that fail before they work again
    reads: list[int] = field(default_factory=list)
    recent: RecentMessages = field(init=False)

    def __post_init__(self) -> None:
        self.recent = RecentMessages(self.read)

    async def read(self, serial: int) -> Message | None:
        self.reads.append(serial)
        if self.failing:
            self.failing -= 1
            raise ConnectionError("the store is away")
        return await message_at(self.channel, serial)

    async def attach(self, from_serial: int | None = None) -> None:
        """Attach as an agent does: from ``from_serial`` (its events replayed after the
        snapshot), without appends, with the latest messages."""
        self.recent.expect()
        subscription = self.channel.subscribe(self.recent.apply)
        attached = await self.channel.attach(
            from_serial=from_serial, types=WATCHED_TYPES, rewind=KEPT_MESSAGES
        )
        self.recent.prime(attached)
        await subscription

    async def caught_up(self, serial: int) -> list[Message]:
        """The kept messages once the event ``serial`` is applied, every text in."""
        await eventually(lambda: (self.recent.serial or 0) >= serial, what=f"event {serial}")
        kept = await self.recent.latest(serial + 1)
        assert kept is not None
        return kept


@asynccontextmanager
async def two_clients() -> AsyncIterator[tuple[Client, Client]]:
    async with running_node(publish_rate=0) as node:
        dial = InProcessDialer(node)
        async with (
            connect(URL, client_id="alice", dial=dial) as alice,
            connect(URL, client_id="helper", dial=dial) as helper,
        ):
            yield alice, helper


def room() -> str:
    return f"room:{uuid.uuid4().hex[:8]}"


async def test_kept_messages_are_what_history_returns_after_every_kind_of_change() -> None:
    name = room()
    async with two_clients() as (alice, helper):
        lunch = alice.channels.get(name)
        await lunch.publish("before the attach")
        early = lunch.stream()
        await early.start("streaming since ")
        await early.append("before ")
        reader = Reader(helper.channels.get(name))
        await reader.attach(from_serial=0)  # what came before is replayed, and left out
        await early.append("the attach")
        await early.end()
        edited = await lunch.publish("tacos?")
        await lunch.update(edited, data="noodles?")
        gone = await lunch.publish("oops")
        await lunch.delete(gone)
        await lunch.react(edited, "👍")
        async with lunch.stream() as story:
            for word in ("once ", "upon ", "a time"):
                await story.append(word)
        stopped = lunch.stream()
        await stopped.start("I was ")
        await stopped.append("about to")
        await lunch.cancel(stopped.msg_serial or 0, reason="enough")
        await stopped.end()
        await lunch.publish({"vote": "yes"}, name="vote")
        last = await lunch.publish("@helper so?")
        kept = await reader.caught_up(last)
        assert kept == await latest_messages(lunch, KEPT_MESSAGES)
        texts = {m.msg_serial: m.data for m in kept}
        assert texts[early.msg_serial or 0] == "streaming since before the attach"
        assert texts[story.msg_serial or 0] == "once upon a time"
        assert texts[edited] == "noodles?"
    # each finished stream was read once (the one ended by a cancel too), nothing else
    assert sorted(reader.reads) == sorted([early.msg_serial, story.msg_serial, stopped.msg_serial])


async def test_the_agents_own_answer_is_not_read_back() -> None:
    name = room()
    async with two_clients() as (alice, helper):
        reader = Reader(helper.channels.get(name))
        await reader.attach()
        question = await alice.channels.get(name).publish("@helper hi")
        answer = reader.channel.stream(extras={"reply_to": question})
        await answer.start("Hello ")
        reader.recent.own(answer)
        for word in ("there, ", "how can ", "I help?"):
            await answer.append(word)
        await answer.end()
        last = await alice.channels.get(name).publish("thanks")
        kept = await reader.caught_up(last)
        assert kept == await latest_messages(reader.channel, KEPT_MESSAGES)
        assert kept[-2].data == "Hello there, how can I help?"
    assert reader.reads == []


async def test_a_text_that_cannot_be_read_is_read_again_when_it_is_needed() -> None:
    name = room()
    async with two_clients() as (alice, helper):
        reader = Reader(helper.channels.get(name), failing=1)
        await reader.attach()
        async with alice.channels.get(name).stream() as story:
            await story.append("the end")
        last = await alice.channels.get(name).publish("@helper what happened?")
        kept = await reader.caught_up(last)
        assert [m.data for m in kept] == ["the end", "@helper what happened?"]
    assert reader.reads == [story.msg_serial, story.msg_serial]


async def test_only_the_newest_are_kept_and_an_older_context_reads_history() -> None:
    name = room()
    long = "word " * (CONTEXT_TOKENS // 4)  # a quarter of a context
    async with two_clients() as (alice, helper):
        reader = Reader(helper.channels.get(name))
        await reader.attach()
        lunch = alice.channels.get(name)
        first = await lunch.publish("@helper the first question")
        for _ in range(KEPT_TOKENS * 4 // len(long) + 4):
            last = await lunch.publish(long)
        kept = await reader.caught_up(last)
        history = await latest_messages(lunch, KEPT_MESSAGES)
        assert len(kept) < len(history)
        assert kept == history[-len(kept) :]
        trigger = history[-1]
        assert select(kept, trigger, [], CONTEXT_TOKENS) == select(
            history, trigger, [], CONTEXT_TOKENS
        )
        # A context for the first question (asked again, say) needs what was dropped.
        assert await reader.recent.latest(first) is None


async def test_a_gap_in_the_events_drops_what_is_kept() -> None:
    name = room()
    async with two_clients() as (alice, helper):
        reader = Reader(helper.channels.get(name))
        await reader.attach()
        await reader.caught_up(await alice.channels.get(name).publish("hi"))
        reader.recent.reset()
        assert await reader.recent.latest(10) is None
        await alice.channels.get(name).publish("later")
        assert await reader.recent.latest(10) is None
        assert reader.recent.kept == 0


# ------------------------------------------------------------------ unit: exact states


def kept_message(serial: int, text: str, status: str = "complete") -> Message:
    return Message(
        msg_serial=serial,
        id=None,
        client_id="bob",
        name="text",
        data=text,
        extras={},
        timestamp=serial,
        updated_at=serial,
        status=status,  # type: ignore[arg-type]
    )


def snapshot(serial: int, *messages: Message) -> Attached:
    return Attached(
        channel="room:unit",
        epoch="e",
        serial=serial,
        resumed=False,
        messages=list(messages),
        presence=[],
    )


def ended(serial: int, msg_serial: int) -> Event:
    return Event(
        channel="room:unit",
        serial=serial,
        type="update",
        msg_serial=msg_serial,
        client_id="bob",
        timestamp=serial,
        status="complete",
    )


def text_of(tokens: int) -> str:
    """A text that costs ``tokens`` in a context (estimate_tokens + 2 per message)."""
    return "w" * (4 * (tokens - 3))


class GatedReads:
    """Reads that wait until the test lets them through."""

    def __init__(self, texts: dict[int, str]) -> None:
        self.texts = texts
        self.open = asyncio.Event()

    async def __call__(self, serial: int) -> Message | None:
        await self.open.wait()
        return kept_message(serial, self.texts[serial])


async def test_a_read_that_ends_while_waiting_can_leave_too_little_before_the_trigger() -> None:
    """The check that enough is kept before the trigger is made again once the texts are
    in: a text read meanwhile can push older messages out (here the only long one)."""
    reads = GatedReads({3: text_of(2003)})
    recent = RecentMessages(reads)
    recent.expect()
    recent.prime(
        snapshot(
            5,
            kept_message(1, text_of(1000)),  # dropped at once: a history read would have it
            kept_message(2, text_of(6003)),  # a context's worth before the trigger...
            kept_message(3, "", status="streaming"),
            kept_message(4, "@helper hi"),  # the trigger
            kept_message(5, text_of(10995)),
        )
    )
    assert recent.kept == 4
    recent.apply(ended(6, 3))  # ...until the stream's 2,003 tokens are in
    waiting = asyncio.ensure_future(recent.latest(4))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    reads.open.set()
    assert await waiting is None  # read history: message 2 is gone now
    assert recent.kept == 3


async def test_only_the_texts_before_the_trigger_are_waited_for() -> None:
    reads = GatedReads({3: "a later answer"})
    recent = RecentMessages(reads)
    recent.expect()
    recent.prime(
        snapshot(
            3,
            kept_message(1, "hi"),
            kept_message(2, "@helper hi"),
            kept_message(3, "", "streaming"),
        )
    )
    recent.apply(ended(4, 3))
    kept = await asyncio.wait_for(recent.latest(2), 5)
    assert kept is not None and [m.data for m in kept[:2]] == ["hi", "@helper hi"]


async def test_a_gap_right_at_the_attach_keeps_its_snapshot_and_others_drop_it() -> None:
    reads = GatedReads({})
    recent = RecentMessages(reads)
    recent.expect()
    recent.gap(7)  # before the attach's reply is in: the reply is what counts
    recent.prime(snapshot(7, kept_message(7, "hi")))
    recent.gap(7)  # after it, at its very serial: nothing was applied that is missing
    assert await recent.latest(8) == [kept_message(7, "hi")]
    recent.apply(
        Event(channel="room:unit", serial=8, type="create", client_id="bob", timestamp=8, data="x")
    )
    recent.gap(9)
    assert await recent.latest(10) is None


async def test_nothing_of_an_answer_is_held_while_nothing_is_kept() -> None:
    recent = RecentMessages(GatedReads({}))
    recent.expect()
    recent.prime(snapshot(1, kept_message(1, "hi")))
    recent.gap(5)  # events were lost: nothing kept from now on
    stream = MessageStream(SimpleNamespace(name="room:unit"))  # type: ignore[arg-type]
    stream.msg_serial = 6
    recent.own(stream)
    assert recent._own == {}  # a room that stays attached would pile them up
