"""The rollup window kept at the source: a stream joins the fragments that come within the
server's window (``connected.limits.rollup_ms``), or while its previous append waits for its
``ok``, into one append, so that each append is one event and one frame to every member,
also on a connection that carries several streams (an agent's)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from polling import eventually
from roomcast.client import Event, MessageStream, connect
from roomcast.testing import ServerProcess

ENV = {"ROOMCAST_PUBLISH_RATE": "0", "ROOMCAST_LOG_LEVEL": "warning"}


def server(tmp: Path, rollup_ms: int) -> ServerProcess:
    env = {**ENV, "ROOMCAST_ROLLUP_MS": str(rollup_ms)}
    return ServerProcess(store=f"sqlite:///{tmp / 'r.db'}", env=env)


@pytest.fixture(scope="module")
def window_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with server(tmp_path_factory.mktemp("rollup-200"), 200) as proc:
        yield proc


@pytest.fixture(scope="module")
def no_window_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with server(tmp_path_factory.mktemp("rollup-0"), 0) as proc:
        yield proc


def appends_of(seen: list[Event], stream: MessageStream) -> list[str]:
    return [e.data for e in seen if e.type == "append" and e.msg_serial == stream.msg_serial]


async def test_two_streams_on_one_connection_each_send_an_append_a_window(
    window_server: ServerProcess, channel_name: str
) -> None:
    """Two answers streamed side by side over one connection, a token every 20 ms each
    for 0.6 s, with a 200 ms window: each makes a few events, not thirty. (The server
    cannot merge them itself here: a reply never waits for a window while another
    request waits behind it.)"""
    async with (
        connect(window_server.url, client_id="agent") as agent,
        connect(window_server.url, client_id="bob") as bob,
    ):
        assert agent.connected is not None
        assert agent.connected.limits["rollup_ms"] == 200
        assert agent.rollup_s == 0.2
        seen: list[Event] = []
        await bob.channels.get(channel_name).subscribe(seen.append)
        room = agent.channels.get(channel_name)
        tokens = [f"w{k} " for k in range(30)]
        async with room.stream() as first, room.stream() as second:
            for token in tokens:
                await first.append(token)
                await second.append(token.upper())
                await asyncio.sleep(0.02)
        for stream, text in ((first, "".join(tokens)), (second, "".join(tokens).upper())):
            assert stream.status == "complete" and stream.text == text
            await eventually(
                lambda s=stream, t=text: "".join(appends_of(seen, s)) == t, what="every append"
            )
            events = appends_of(seen, stream)
            assert 2 <= len(events) <= 12, events  # 1 + one a window, whatever the pace


async def test_fragments_that_come_before_the_previous_ok_are_joined(
    no_window_server: ServerProcess, channel_name: str
) -> None:
    """With no window, a fragment still waits while its stream's previous append waits
    for its ``ok``: a burst of fifty goes as a few appends, in order, nothing lost."""
    async with (
        connect(no_window_server.url, client_id="agent") as agent,
        connect(no_window_server.url, client_id="bob") as bob,
    ):
        assert agent.rollup_s == 0
        seen: list[Event] = []
        await bob.channels.get(channel_name).subscribe(seen.append)
        tokens = [f"t{k} " for k in range(50)]
        async with agent.channels.get(channel_name).stream() as answer:
            for token in tokens:
                await answer.append(token)  # no await of a round trip in between
        assert answer.text == "".join(tokens)
        await eventually(
            lambda: "".join(appends_of(seen, answer)) == answer.text, what="every append"
        )
        assert len(appends_of(seen, answer)) < 10


async def test_send_now_puts_the_held_text_before_what_follows(
    window_server: ServerProcess, channel_name: str
) -> None:
    """A message that must follow the text streamed so far (a tool call shown in its place)
    comes after it live too: ``send_now`` sends what the window holds."""
    async with (
        connect(window_server.url, client_id="agent") as agent,
        connect(window_server.url, client_id="bob") as bob,
    ):
        seen: list[Event] = []
        await bob.channels.get(channel_name).subscribe(seen.append)
        room = agent.channels.get(channel_name)
        async with room.stream() as answer:
            await answer.append("Let ")
            await answer.append("me look.")  # held: the window is open
            answer.send_now()
            await room.publish("a tool call")
            await answer.append(" Found it.")
        await eventually(lambda: any(e.type == "update" for e in seen), what="the end")
        order = [e.data for e in seen if e.type in ("append", "create")]
        assert order.index("a tool call") > order.index("me look.")
        assert answer.text == "Let me look. Found it."


class OksInOneCommit:
    """The appends of several streams, answered the way a loaded server answers them: no
    ``ok`` until :meth:`answer_all` gives every one at once, as one commit does."""

    name = "room:beats"

    def __init__(self, rollup_s: float) -> None:
        self.rollup_s = rollup_s
        self.sent: list[tuple[float, int, str]] = []  # (loop time, msg_serial, data)
        self._due: list[asyncio.Future[int | None]] = []

    def send_append(self, msg_serial: int, data: str) -> asyncio.Future[int | None]:
        loop = asyncio.get_running_loop()
        self.sent.append((loop.time(), msg_serial, data))
        self._due.append(loop.create_future())
        return self._due[-1]

    def answer_all(self) -> None:
        for future in self._due:
            future.set_result(None)
        self._due.clear()


async def test_streams_answered_in_one_commit_each_go_on_at_their_own_beat() -> None:
    """Two streams whose ``ok``s come late and together: what each holds goes at its own
    next window boundary (counted from its last append), not both at once as the ``ok``s
    come. Sent at once, they would be committed together again, and again: streams in
    lockstep, whose bursts hold up every other write (a person's message, an answer's
    start) behind them."""
    loop = asyncio.get_running_loop()
    window = 0.1
    channel = OksInOneCommit(window)
    first = MessageStream(channel)  # type: ignore[arg-type]
    second = MessageStream(channel)  # type: ignore[arg-type]
    first.msg_serial, second.msg_serial = 1, 2
    await first.append("a0 ")  # each goes at once: its stream's beat starts here
    await asyncio.sleep(0.03)
    await second.append("b0 ")
    beats = {1: channel.sent[0][0], 2: channel.sent[1][0]}
    await asyncio.sleep(0.3)  # both windows ended long ago, with the oks still due
    await first.append("a1 ")
    await second.append("b1 ")
    assert len(channel.sent) == 2  # held
    answered = loop.time()
    channel.answer_all()
    await asyncio.sleep(2.5 * window)
    later = {serial: (at, data) for at, serial, data in channel.sent[2:]}
    assert {serial: data for serial, (_, data) in later.items()} == {1: "a1 ", 2: "b1 "}
    for serial, beat in beats.items():
        next_beat = beat + math.ceil((answered - beat) / window) * window
        assert later[serial][0] >= next_beat - window / 50, (serial, answered, later)


async def test_the_stored_text_is_known_once_every_append_has_its_ok() -> None:
    """``stored_text()``: what the server stores, once no append sent waits for its reply
    (an agent keeps its own answer's text from it instead of reading it back)."""
    channel = OksInOneCommit(0.0)
    stream = MessageStream(channel)  # type: ignore[arg-type]
    stream.msg_serial, stream.text = 1, "Hello "
    await stream.append("there")
    assert channel.sent and stream.stored_text() is None  # its ok is still due
    channel.answer_all()
    await asyncio.sleep(0)
    assert stream.stored_text() == "Hello there"
