"""``roomcast pub --stream`` and ``roomcast sub`` as a person uses them: in a terminal (a
pseudo-terminal), against a real server; keys go through the terminal's line discipline and
assertions read the screen."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pty_terminal import PtyCommand

from roomcast.client import Message, connect
from roomcast.settings import DEFAULT_ANONYMOUS_CAPABILITY
from roomcast.testing import ServerProcess

# As anonymous users have it, and `cancel-any` too: an editor stops someone else's stream.
CAPABILITY = json.loads(DEFAULT_ANONYMOUS_CAPABILITY)["*"] + ["cancel-any"]
ENV = {
    "ROOMCAST_PUBLISH_RATE": "0",
    "ROOMCAST_PRESENCE_GRACE_S": "2",
    "ROOMCAST_LOG_LEVEL": "warning",
    "ROOMCAST_ANONYMOUS_CAPABILITY": json.dumps({"*": CAPABILITY}),
}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(env=ENV) as proc:
        yield proc


@pytest.fixture(autouse=True)
def own_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands keep their client_id in here, not in the real home."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


async def newest(server: ServerProcess, channel: str) -> Message:
    async with connect(server.url, client_id="reader") as reader:
        async for page in reader.channels.get(channel).history(limit=1):
            return page.messages[-1]
    raise AssertionError(f"nothing in {channel}")


def wait_for_text(server: ServerProcess, channel: str, text: str) -> None:
    """Until the newest message of ``channel`` holds ``text`` (it streams in meanwhile)."""
    deadline = time.monotonic() + 20
    while (message := asyncio.run(newest(server, channel))).data != text:
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def test_pub_stream_ctrl_c_stops_at_once_and_ends_the_message_cancelled_by_its_author(
    server: ServerProcess,
) -> None:
    args = ("pub", "room:ctrl-c", "--stream", "--server", server.url, "--client-id", "poet")
    with PtyCommand(*args) as pub:
        pub.wait_for(lambda lines: lines == ["1"])  # the msg_serial, printed at once
        pub.send(b"roses are red\n")
        wait_for_text(server, "room:ctrl-c", "roses are red\n")
        pressed = time.monotonic()
        pub.send(b"\x03")  # Ctrl-C: SIGINT from the terminal
        assert pub.exit_code() == 130, pub.output()
        assert time.monotonic() - pressed < 5
        assert pub.screen()[-1] == "cancelled"
        assert "Traceback" not in pub.output()
    message = asyncio.run(newest(server, "room:ctrl-c"))
    assert (message.status, message.cancelled_by) == ("cancelled", "poet")
    assert message.data == "roses are red\n" and "failure" not in message.extras


def test_pub_stream_ctrl_d_ends_the_message_complete_at_once(server: ServerProcess) -> None:
    args = ("pub", "room:ctrl-d", "--stream", "--server", server.url, "--client-id", "poet")
    with PtyCommand(*args) as pub:
        pub.wait_for(lambda lines: lines == ["1"])
        pub.send(b"violets are blue\n")
        wait_for_text(server, "room:ctrl-d", "violets are blue\n")
        pressed = time.monotonic()
        pub.send(b"\x04")  # Ctrl-D at the start of a line: end of input
        assert pub.exit_code() == 0, pub.output()
        assert time.monotonic() - pressed < 5
    message = asyncio.run(newest(server, "room:ctrl-d"))
    assert (message.status, message.data) == ("complete", "violets are blue\n")


def test_pub_stream_stops_when_someone_cancels_without_waiting_for_input(
    server: ServerProcess,
) -> None:
    args = ("pub", "room:stop-it", "--stream", "--server", server.url, "--client-id", "poet")
    with PtyCommand(*args) as pub:
        pub.wait_for(lambda lines: lines == ["1"])

        async def cancel() -> None:
            async with connect(server.url, client_id="editor") as editor:
                await editor.channels.get("room:stop-it").cancel(1, reason="enough")

        asyncio.run(cancel())
        assert pub.exit_code() == 1, pub.output()  # no more typing needed
        assert pub.screen()[-1] == "cancelled by editor"
    message = asyncio.run(newest(server, "room:stop-it"))
    assert (message.status, message.cancelled_by) == ("cancelled", "editor")


def sub_in_a_terminal(server: ServerProcess, channel: str) -> PtyCommand:
    sub = PtyCommand("sub", channel, "--server", server.url, "--client-id", "viewer", columns=80)
    sub.wait_for(lambda lines: any(f"attached to {channel}" in line for line in lines))
    return sub


async def test_sub_in_a_terminal_grows_a_streamed_answer_on_one_line_then_settles(
    server: ServerProcess,
) -> None:
    channel = "room:grow"
    words = [f"word{i} " for i in range(40)]  # wider than the terminal: the line shows its end
    with sub_in_a_terminal(server, channel) as sub:
        async with (
            connect(server.url, client_id="agent") as agent,
            connect(server.url, client_id="alice") as alice,
        ):
            async with agent.channels.get(channel).stream() as answer:
                for word in words[:3]:
                    await answer.append(word)
                await answer.flush()
                growing = await asyncio.to_thread(
                    sub.wait_for, lambda lines: lines[-1] == "1 agent [streaming] word0 word1 word2"
                )
                # Another message meanwhile goes above the growing line, which stays whole.
                asked = await alice.channels.get(channel).publish("is it ready?")
                question = f"{asked} alice is it ready?"
                growing = await asyncio.to_thread(
                    sub.wait_for, lambda lines: question in lines and lines[-1].startswith("1 ")
                )
                assert growing[-2:] == [
                    question,
                    "1 agent [streaming] word0 word1 word2",
                ]
                for word in words[3:]:
                    await answer.append(word)
                await answer.flush()
                growing = await asyncio.to_thread(
                    sub.wait_for, lambda lines: lines[-1].endswith("word39")
                )
                assert growing[-1].startswith("1 agent [streaming] …")
                assert len(growing[-1]) < 80  # cut to the terminal's width: never wraps
            text = "".join(words).rstrip()
            settled = await asyncio.to_thread(
                sub.wait_for, lambda lines: any("[complete]" in line for line in lines)
            )
    # The whole answer on one line (that the terminal wraps at 80 columns), under alice's.
    start = next(i for i, row in enumerate(settled) if row.startswith("1 agent [complete] "))
    assert settled[start - 1] == question
    assert "".join(row.ljust(80) for row in settled[start:]).rstrip() == (
        f"1 agent [complete] {text}"
    )
    assert not any("append" in row for row in settled)


async def test_sub_in_a_terminal_settles_a_cancelled_multiline_answer_with_who_stopped_it(
    server: ServerProcess,
) -> None:
    channel = "room:stopped"
    with sub_in_a_terminal(server, channel) as sub:
        async with (
            connect(server.url, client_id="agent") as agent,
            connect(server.url, client_id="bob") as bob,
        ):
            question = await bob.channels.get(channel).publish("two lines please")
            async with agent.channels.get(channel).stream(extras={"reply_to": question}) as answer:
                await answer.append("first line\nsecond")
                await answer.flush()
                await asyncio.to_thread(
                    sub.wait_for, lambda lines: lines[-1].endswith("first line second")
                )
                await bob.channels.get(channel).cancel(answer.msg_serial or 0)
                await asyncio.wait_for(answer.cancelled.wait(), 20)
            settled = await asyncio.to_thread(
                sub.wait_for, lambda lines: any("cancelled by bob" in line for line in lines)
            )
    head = "2 agent [cancelled by bob] "
    assert settled[-2:] == [head + "first line", " " * len(head) + "second"]
