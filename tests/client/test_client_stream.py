"""Streaming answers through the SDK: ``channel.stream()``, cancels, and the message verbs
(append, update, delete, cancel, react), against real servers on both stores."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from roomcast.client import Cancelled, Conflict, Event, Message, NotFound, connect
from roomcast.testing import ServerProcess

ENV = {
    "ROOMCAST_PRESENCE_GRACE_S": "2",
    "ROOMCAST_PUBLISH_RATE": "0",
    "ROOMCAST_LOG_LEVEL": "warning",
}


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def stream_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    tmp: Path = tmp_path_factory.mktemp("client-streams")
    store = "memory://" if request.param == "memory" else f"sqlite:///{tmp / 'r.db'}"
    with ServerProcess(store=store, env=ENV) as proc:
        yield proc


async def newest(server: ServerProcess, channel: str) -> Message:
    async with connect(server.url, client_id="reader") as reader:
        async for page in reader.channels.get(channel).history(limit=1):
            return page.messages[-1]
    raise AssertionError("no message")


async def test_stream_publishes_appends_and_ends_complete(
    stream_server: ServerProcess, channel_name: str
) -> None:
    async with (
        connect(stream_server.url, client_id="agent") as agent,
        connect(stream_server.url, client_id="bob") as bob,
    ):
        seen: list[Event] = []
        subscription = await bob.channels.get(channel_name).subscribe(seen.append)
        tokens = [f"word{i} " for i in range(50)]
        async with agent.channels.get(channel_name).stream(
            name="answer", extras={"model": "scripted"}
        ) as answer:
            assert isinstance(answer.msg_serial, int)
            for token in tokens:
                await answer.append(token)  # sent at once, not waited for
            await answer.flush()  # every fragment stored
        assert answer.status == "complete" and answer.text == "".join(tokens)
        message = await newest(stream_server, channel_name)
        assert (message.msg_serial, message.name, message.status) == (
            answer.msg_serial,
            "answer",
            "complete",
        )
        assert message.data == "".join(tokens) and message.extras == {"model": "scripted"}
        while not seen or seen[-1].type != "update":  # noqa: ASYNC110 - a plain list
            await asyncio.sleep(0.02)
        assert "".join(e.data for e in seen if e.type == "append") == "".join(tokens)
        # The stream attached the channel for itself, and let it go at the end.
        assert agent.channels.get(channel_name).state == "detached"
        await subscription.aclose()


async def test_a_cancel_reaches_the_author_and_ends_the_message_cancelled(
    stream_server: ServerProcess, channel_name: str
) -> None:
    async with (
        connect(stream_server.url, client_id="agent") as agent,
        connect(stream_server.url, client_id="bob") as bob,
    ):
        bob_channel = bob.channels.get(channel_name)
        question = await bob_channel.publish("what should we eat?")
        events: list[Event] = []
        answer_serial: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def on_event(event: Event) -> None:
            events.append(event)
            appended = sum(1 for e in events if e.type == "append")
            if event.type == "append" and appended == 5:
                # The answer replies to bob's question, so it is bob's to cancel.
                assert await bob_channel.cancel(event.msg_serial, reason="enough") is not None
                answer_serial.set_result(int(event.msg_serial))  # type: ignore[arg-type]

        subscription = await bob_channel.subscribe(on_event)
        raised: list[Cancelled] = []
        async with agent.channels.get(channel_name).stream(extras={"reply_to": question}) as answer:
            for i in range(2000):
                try:
                    await answer.append(f"t{i} ")
                except Cancelled as exc:
                    raised.append(exc)
                    raise  # the block ends the message cancelled and swallows it
                await asyncio.sleep(0.005)
        assert answer.cancelled.is_set() and answer.cancelled_by == "bob"
        assert raised and raised[0].msg_serial == answer.msg_serial
        assert raised[0].cancelled_by == "bob"
        assert answer.status == "cancelled"
        assert await answer_serial == answer.msg_serial

        message = await newest(stream_server, channel_name)
        assert message.status == "cancelled" and message.cancelled_by == "bob"
        assert message.data == answer.text  # nothing appended after the cancel
        while not any(e.type == "update" for e in events):  # noqa: ASYNC110 - a plain list
            await asyncio.sleep(0.02)
        [end] = [e for e in events if e.type == "update"]
        assert end.status == "cancelled" and end.client_id == "agent"
        [cancel] = [e for e in events if e.type == "cancel"]
        assert (cancel.client_id, cancel.reason) == ("bob", "enough")
        await subscription.aclose()

        async with connect(stream_server.url, client_id="carol") as carol:
            attached = await carol.channels.get(channel_name).attach(rewind=5)
            assert attached.messages
            late = attached.messages[-1]
            assert (late.status, late.cancelled_by, late.data) == ("cancelled", "bob", answer.text)


async def test_an_error_in_the_block_ends_the_message_failed(
    stream_server: ServerProcess, channel_name: str
) -> None:
    async with connect(stream_server.url, client_id="agent") as agent:
        channel = agent.channels.get(channel_name)
        with pytest.raises(ValueError, match="the model gave up"):
            async with channel.stream() as answer:
                await answer.append("Let me think")
                raise ValueError("the model gave up")
        assert answer.status == "failed"
        message = await newest(stream_server, channel_name)
        assert message.status == "failed" and message.data == "Let me think"
        assert message.extras == {"failure": "ValueError: the model gave up"}


async def test_message_verbs_return_serials_and_no_ops_return_none(
    stream_server: ServerProcess, channel_name: str
) -> None:
    async with (
        connect(stream_server.url, client_id="alice") as alice,
        connect(stream_server.url, client_id="bob") as bob,
    ):
        mine = alice.channels.get(channel_name)
        theirs = bob.channels.get(channel_name)
        serial = await mine.publish("", streaming=True)
        assert await mine.append(serial, "hello") == serial + 1
        with pytest.raises(Conflict):
            await theirs.append(serial, "not mine")
        assert await mine.update(serial, extras={"lang": "en"}) == serial + 2
        assert await mine.update(serial, status="complete") == serial + 3
        assert await mine.update(serial, status="complete") is None  # repeating a final status
        with pytest.raises(Conflict):
            await mine.append(serial, "more")
        with pytest.raises(Conflict):
            await mine.cancel(serial)  # not streaming
        assert await theirs.react(serial, "🎉") == serial + 4
        assert await theirs.react(serial, "🎉") is None
        assert await mine.annotate(serial, "🎉") == serial + 5
        assert await theirs.react(serial, "🎉", remove=True) == serial + 6
        message = await newest(stream_server, channel_name)
        assert message.reactions == {"🎉": ["alice"]} and message.extras == {"lang": "en"}
        assert (message.data, message.status) == ("hello", "complete")
        assert await mine.delete(serial) == serial + 7
        assert await mine.delete(serial) is None
        with pytest.raises(NotFound):
            await mine.append(serial + 1000, "?")


def test_the_streaming_example_of_the_sdk_guide_runs(tmp_path: Path) -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "sdk.md").read_text()
    section = guide.split("## Streaming answers", 1)[1]
    snippet = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    with ServerProcess(store="memory://", env=ENV) as server:
        script = tmp_path / "stream_example.py"
        script.write_text(snippet.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}"))
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["streamed 1 complete 'Tacos it is.'"]


async def test_without_subscribe_a_cancel_is_learned_from_the_refused_append(
    channel_name: str,
) -> None:
    capability = '{"*": ["publish", "update-own", "cancel-any", "history"]}'
    env = {**ENV, "ROOMCAST_ANONYMOUS_CAPABILITY": capability}
    with ServerProcess(store="memory://", env=env) as server:
        async with (
            connect(server.url, client_id="agent") as agent,
            connect(server.url, client_id="bob") as bob,
        ):
            reached = False
            async with agent.channels.get(channel_name).stream() as answer:
                await answer.append("one ")
                assert answer.msg_serial is not None
                await bob.channels.get(channel_name).cancel(answer.msg_serial)
                await answer.append("two")  # sent; the refusal comes back later
                await answer.flush()  # raises Cancelled; the block swallows it
                reached = True
            assert not reached
            assert answer.cancelled.is_set() and answer.cancelled_by == "bob"
            assert answer.status == "cancelled"
            message = await newest(server, channel_name)
            assert (message.status, message.data) == ("cancelled", "one ")
