"""Streamed messages (docs/protocol.md §2 "Rollup", "Replay", §3 "Streams") against real
``roomcast serve`` processes, on the memory and the SQLite store."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from roomcast.testing import Msg, ServerProcess, WireClient

STREAM_ENV = {
    "ROOMCAST_PRESENCE_GRACE_S": "2",
    "ROOMCAST_PUBLISH_RATE": "0",
    "ROOMCAST_LOG_LEVEL": "warning",
    "ROOMCAST_ROLLUP_MS": "25",
    "ROOMCAST_STREAM_IDLE_TIMEOUT_S": "2",
    "ROOMCAST_CANCEL_GRACE_S": "1",
    # Anyone may cancel anyone's stream here (the default anonymous capability has no *-any).
    "ROOMCAST_ANONYMOUS_CAPABILITY": '{"*": ["*"]}',
}


def room() -> str:
    return f"room:{uuid.uuid4().hex[:10]}"


def _start(store: str, tmp: Path, **env: str) -> ServerProcess:
    url = f"sqlite:///{tmp / 'roomcast.db'}" if store == "sqlite" else "memory://"
    return ServerProcess(store=url, env={**STREAM_ENV, **env}).start()


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def streams_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server per store with short idle and cancel timeouts and the default rollup."""
    proc = _start(request.param, tmp_path_factory.mktemp("streams"))
    yield proc
    proc.close()


@pytest.fixture
async def alice_and_bob(
    streams_server: ServerProcess,
) -> AsyncIterator[tuple[WireClient, WireClient]]:
    """Alice and Bob connected to the streams server, closed after the test."""
    async with (
        await WireClient.connect(streams_server.ws_url, client_id="alice") as a,
        await WireClient.connect(streams_server.ws_url, client_id="bob") as b,
    ):
        yield a, b


def is_event(channel: str, type_: str | None = None, msg_serial: int | None = None) -> Any:
    def match(m: Msg) -> bool:
        return (
            m["action"] == "event"
            and m["channel"] == channel
            and (type_ is None or m["type"] == type_)
            and (msg_serial is None or m.get("msg_serial") == msg_serial)
        )

    return match


async def send_appends(
    client: WireClient, channel: str, msg_serial: int, fragments: list[str], pause: float = 0
) -> list[Msg]:
    """Send one append per fragment (pipelined), then return the replies in order."""
    refs = []
    for fragment in fragments:
        ref = client.next_ref()
        refs.append(ref)
        await client.send(
            {
                "action": "append",
                "ref": ref,
                "channel": channel,
                "msg_serial": msg_serial,
                "data": fragment,
            }
        )
        if pause:
            await asyncio.sleep(pause)
    return [await client.next(lambda m, r=r: m.get("ref") == r, 20) for r in refs]  # type: ignore[misc]


def rebuild(events: list[Msg]) -> str:
    """A message's text from its events, as a client applies them (append, or update
    carrying the full data)."""
    text = ""
    for event in events:
        if event["type"] == "append":
            text += event["data"]
        elif event["type"] == "update" and "data" in event:
            text = event["data"]
    return text


async def start_stream(client: WireClient, channel: str) -> int:
    ok = await client.request("publish", channel=channel, data="", streaming=True)
    assert ok["action"] == "ok", ok
    return int(ok["serial"])


# ---------------------------------------------------------------------------- criterion 1


async def test_live_fragments_then_late_joiner_gets_one_complete_message(
    streams_server: ServerProcess, alice_and_bob: tuple[WireClient, WireClient]
) -> None:
    channel = room()
    a, b = alice_and_bob
    await b.request("attach", channel=channel)
    msg_serial = await start_stream(a, channel)
    fragments = [f"tok{i:03d} " for i in range(200)]

    seen: list[Msg] = []
    first_seen_at: list[float] = []

    async def watch() -> None:
        while True:
            event = await b.next(is_event(channel), 20)
            seen.append(event)
            if event["type"] == "append" and not first_seen_at:
                first_seen_at.append(time.monotonic())
            if event["type"] == "update" and event.get("status") == "complete":
                return

    watching = asyncio.create_task(watch())
    replies = await send_appends(a, channel, msg_serial, fragments, pause=0.003)
    last_sent_at = time.monotonic()
    assert all(r["action"] == "ok" for r in replies), [r for r in replies if r["action"] != "ok"]
    done = await a.request("update", channel=channel, msg_serial=msg_serial, status="complete")
    assert done["action"] == "ok"
    await asyncio.wait_for(watching, 20)

    # B saw appends while the stream ran, in order, and they add up to the final text.
    assert first_seen_at and first_seen_at[0] < last_sent_at
    assert [e["serial"] for e in seen] == sorted(e["serial"] for e in seen)
    appends = [e for e in seen if e["type"] == "append"]
    assert all(e["msg_serial"] == msg_serial and e["client_id"] == "alice" for e in appends)
    final = "".join(fragments)
    assert rebuild(seen) == final

    c = await WireClient.connect(streams_server.ws_url, client_id="carol")
    attached = await c.request("attach", channel=channel, rewind=10)
    [message] = attached["messages"]
    assert message["msg_serial"] == msg_serial
    assert message["data"] == final and message["status"] == "complete"
    history = await c.request("history", channel=channel)
    assert history["messages"] == [message]
    await c.close()


# ---------------------------------------------------------------------------- criterion 2


async def test_subscriber_dropped_mid_stream_resumes_with_exactly_the_text(
    streams_server: ServerProcess,
) -> None:
    channel = room()
    a = await WireClient.connect(streams_server.ws_url, client_id="alice")
    b = await WireClient.connect(streams_server.ws_url, client_id="bob")
    attached = await b.request("attach", channel=channel)
    msg_serial = await start_stream(a, channel)
    fragments = [f"<{i}>" for i in range(300)]
    sending = asyncio.create_task(send_appends(a, channel, msg_serial, fragments, pause=0.002))

    seen: list[Msg] = []
    while sum(1 for e in seen if e["type"] == "append") < 10:
        seen.append(await b.next(is_event(channel), 20))
    b.drop()  # TCP gone, no close frame
    last = seen[-1]["serial"]

    b2 = await WireClient.connect(streams_server.ws_url, client_id="bob")
    resumed = await b2.request("attach", channel=channel, from_serial=last, epoch=attached["epoch"])
    assert resumed["resumed"] is True
    replies = await asyncio.wait_for(sending, 30)
    assert all(r["action"] == "ok" for r in replies)
    await a.request("update", channel=channel, msg_serial=msg_serial, status="complete")
    while True:
        event = await b2.next(is_event(channel), 20)
        assert event["serial"] > seen[-1]["serial"]  # no duplicate across the resume
        seen.append(event)
        if event["type"] == "update" and event.get("status") == "complete":
            break

    serials = [e["serial"] for e in seen]
    assert serials == list(range(serials[0], serials[-1] + 1))  # no gap either
    assert rebuild(seen) == "".join(fragments)
    history = await b2.request("history", channel=channel)
    assert history["messages"][0]["data"] == "".join(fragments)
    for client in (a, b2):
        await client.close()


# ---------------------------------------------------------------------------- criterion 3


async def test_cancel_is_durable_refuses_appends_and_an_ignoring_author_is_ended(
    alice_and_bob: tuple[WireClient, WireClient],
) -> None:
    channel = room()
    a, b = alice_and_bob
    await b.request("attach", channel=channel)
    msg_serial = await start_stream(a, channel)
    await send_appends(a, channel, msg_serial, ["partial ", "answer"])

    ok = await b.request("cancel", channel=channel, msg_serial=msg_serial, reason="stop")
    cancelled_at = time.monotonic()
    assert ok["action"] == "ok" and isinstance(ok["serial"], int)
    cancel = await b.next(is_event(channel, "cancel", msg_serial))
    assert cancel["client_id"] == "bob" and cancel["reason"] == "stop"
    again = await b.request("cancel", channel=channel, msg_serial=msg_serial)
    assert again["action"] == "ok" and "serial" not in again  # a second cancel is a no-op

    [refused] = await send_appends(a, channel, msg_serial, ["more"])
    assert refused["action"] == "error" and refused["code"] == 40900

    # Alice ignores the cancel: the server ends the message itself after cancel_grace_s (1).
    ended = await b.next(is_event(channel, "update", msg_serial), 10)
    assert ended["status"] == "cancelled" and ended["client_id"] is None
    assert 0.8 < time.monotonic() - cancelled_at < 5
    history = await b.request("history", channel=channel)
    [message] = history["messages"]
    assert message["status"] == "cancelled" and message["cancelled_by"] == "bob"
    assert message["data"] == "partial answer"


async def test_cancel_of_a_finished_message_is_409(streams_server: ServerProcess) -> None:
    channel = room()
    a = await WireClient.connect(streams_server.ws_url, client_id="alice")
    msg_serial = await start_stream(a, channel)
    await a.request("update", channel=channel, msg_serial=msg_serial, status="complete")
    refused = await a.request("cancel", channel=channel, msg_serial=msg_serial)
    assert refused["action"] == "error" and refused["code"] == 40900
    await a.close()


async def test_an_append_after_a_cancel_names_the_canceller_in_a_field(
    alice_and_bob: tuple[WireClient, WireClient],
) -> None:
    channel = room()
    a, b = alice_and_bob
    msg_serial = await start_stream(a, channel)
    await b.request("cancel", channel=channel, msg_serial=msg_serial)
    [refused] = await send_appends(a, channel, msg_serial, ["more"])
    assert refused["action"] == "error" and refused["code"] == 40900
    assert refused["cancelled_by"] == "bob"
    assert refused["message"] == f"message {msg_serial} was cancelled by bob"
    plain = (await a.request("publish", channel=channel, data="x"))["serial"]
    [other] = await send_appends(a, channel, plain, ["y"])
    assert other["code"] == 40900 and "cancelled_by" not in other  # only after a cancel


async def test_an_http_append_after_a_cancel_names_the_canceller_in_a_field(
    streams_server: ServerProcess, alice_and_bob: tuple[WireClient, WireClient]
) -> None:
    channel = room()
    a, b = alice_and_bob
    msg_serial = await start_stream(a, channel)
    await b.request("cancel", channel=channel, msg_serial=msg_serial)
    url = f"{streams_server.url}/v1/channels/{channel}/messages/{msg_serial}/append"
    async with httpx.AsyncClient(timeout=30) as http:
        refused = await http.post(
            url, json={"data": "more"}, headers={"X-Roomcast-Client-Id": "alice"}
        )
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert (error["code"], error["cancelled_by"]) == (40900, "bob")


# ---------------------------------------------------------------------------- criterion 4


SDK_AUTHOR = textwrap.dedent(
    """
    import asyncio, sys
    import roomcast.client

    async def main() -> None:
        async with roomcast.client.connect(sys.argv[1], client_id="agent") as client:
            channel = client.channels.get(sys.argv[2])
            async with channel.stream() as answer:
                for word in ("thinking ", "about ", "it "):
                    await answer.append(word)
                await answer.flush()  # stored, before it says so
                print(answer.msg_serial, flush=True)
                await asyncio.sleep(3600)  # killed here

    asyncio.run(main())
    """
)


def run_author(server: ServerProcess, channel: str) -> tuple[subprocess.Popen[str], int]:
    """A real SDK process that streams three words and then hangs; returns it and the
    message's serial."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SDK_AUTHOR, server.url, channel],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip().isdigit(), f"the author printed {line!r}"
    return proc, int(line)


def kill(author: subprocess.Popen[str]) -> None:
    """SIGKILL: the SDK gets no chance to end the message."""
    author.kill()
    author.wait()
    if author.stdout is not None:
        author.stdout.close()


async def test_sweeper_fails_a_stream_whose_author_was_killed(
    streams_server: ServerProcess,
) -> None:
    channel = room()
    watcher = await WireClient.connect(streams_server.ws_url, client_id="watcher")
    await watcher.request("attach", channel=channel)
    author, msg_serial = await asyncio.to_thread(run_author, streams_server, channel)
    kill(author)
    killed_at = time.monotonic()
    ended = await watcher.next(is_event(channel, "update", msg_serial), 15)
    assert time.monotonic() - killed_at < 2 + 5  # stream_idle_timeout_s + 5
    assert ended["status"] == "failed" and ended["client_id"] is None
    assert ended["extras"] == {"failure": "abandoned"}
    history = await watcher.request("history", channel=channel)
    [message] = history["messages"]
    assert message["status"] == "failed" and message["extras"]["failure"] == "abandoned"
    assert message["data"] == "thinking about it "
    await watcher.close()


async def _history_until(server: ServerProcess, channel: str, status: str, within: float) -> Msg:
    client = await WireClient.connect(server.ws_url, client_id="reader")
    deadline = time.monotonic() + within
    try:
        while True:
            history = await client.request("history", channel=channel)
            message: Msg = history["messages"][0]
            if message["status"] == status or time.monotonic() > deadline:
                return message
            await asyncio.sleep(0.1)
    finally:
        await client.close()


async def test_sweeper_ends_abandoned_streams_across_a_restart(tmp_path: Path) -> None:
    server = _start("sqlite", tmp_path)
    try:
        channel = room()
        author, msg_serial = await asyncio.to_thread(run_author, server, channel)
        server.kill()  # the server goes first; the stream is left streaming in the file
        kill(author)
        await asyncio.sleep(2.5)  # past the idle timeout while nothing runs
        server.start()
        restarted_at = time.monotonic()
        message = await _history_until(server, channel, "failed", 10)
        assert message["status"] == "failed", message
        assert time.monotonic() - restarted_at < 2 + 5
        assert message["extras"]["failure"] == "abandoned"

        # The last event is the server's: client_id null.
        c = await WireClient.connect(server.ws_url, client_id="c")
        await c.request("attach", channel=channel, from_serial=msg_serial)
        events = []
        while not events or events[-1]["type"] != "update":
            events.append(await c.next(is_event(channel), 10))
        assert events[-1]["client_id"] is None and events[-1]["status"] == "failed"
        await c.close()
    finally:
        server.close()


async def test_an_ignored_cancel_is_ended_after_a_restart(tmp_path: Path) -> None:
    server = _start(
        "sqlite", tmp_path, ROOMCAST_CANCEL_GRACE_S="3", ROOMCAST_STREAM_IDLE_TIMEOUT_S="60"
    )
    try:
        channel = room()
        a = await WireClient.connect(server.ws_url, client_id="alice")
        b = await WireClient.connect(server.ws_url, client_id="bob")
        msg_serial = await start_stream(a, channel)
        await send_appends(a, channel, msg_serial, ["half"])
        ok = await b.request("cancel", channel=channel, msg_serial=msg_serial)
        assert ok["action"] == "ok"
        server.kill()  # before the grace is over: only the sweep can end it now
        server.start()
        message = await _history_until(server, channel, "cancelled", 10)
        assert message["status"] == "cancelled" and message["cancelled_by"] == "bob"
    finally:
        server.close()


# ---------------------------------------------------------------------------- criterion 5


async def test_reactions_round_trip_and_duplicates_are_no_ops(
    alice_and_bob: tuple[WireClient, WireClient],
) -> None:
    channel = room()
    a, b = alice_and_bob
    await a.request("attach", channel=channel)
    msg_serial = (await a.request("publish", channel=channel, data="lunch?"))["serial"]

    def react(client: WireClient, name: str, op: str) -> Any:
        return client.request(
            "annotate", channel=channel, msg_serial=msg_serial, kind="reaction", name=name, op=op
        )

    added = await react(b, "👍", "add")
    assert added["action"] == "ok" and isinstance(added["serial"], int)
    event = await a.next(is_event(channel, "annotation", msg_serial))
    assert (event["client_id"], event["name"], event["op"]) == ("bob", "👍", "add")
    duplicate = await react(b, "👍", "add")
    assert duplicate["action"] == "ok" and "serial" not in duplicate
    assert (await react(a, "👍", "add"))["serial"] == added["serial"] + 1
    assert "serial" in await react(a, "🌮", "add")
    removed = await react(b, "👍", "remove")
    assert isinstance(removed["serial"], int)
    assert "serial" not in await react(b, "👍", "remove")  # removing what is not there

    history = await b.request("history", channel=channel)
    assert history["messages"][0]["reactions"] == {"👍": ["alice"], "🌮": ["alice"]}
    info = await b.request("attach", channel=channel)
    assert info["serial"] == removed["serial"]  # the no-ops took no serial


# ---------------------------------------------------------------------------- criterion 7


async def test_append_by_another_client_or_after_the_end_is_409_and_changes_nothing(
    alice_and_bob: tuple[WireClient, WireClient],
) -> None:
    channel = room()
    a, b = alice_and_bob
    msg_serial = await start_stream(a, channel)
    await send_appends(a, channel, msg_serial, ["mine"])
    serial_before = (await b.request("attach", channel=channel))["serial"]

    [intruder] = await send_appends(b, channel, msg_serial, ["not yours"])
    assert intruder["action"] == "error" and intruder["code"] == 40900
    await a.request("update", channel=channel, msg_serial=msg_serial, status="complete")
    [late] = await send_appends(a, channel, msg_serial, ["too late"])
    assert late["action"] == "error" and late["code"] == 40900
    [plain] = await send_appends(
        a, channel, (await a.request("publish", channel=channel, data="x"))["serial"], ["y"]
    )
    assert plain["action"] == "error" and plain["code"] == 40900  # never streaming

    history = await b.request("history", channel=channel)
    assert history["messages"][0]["data"] == "mine"
    assert history["messages"][0]["status"] == "complete"
    events = [m for m in await b.quiet(0.3) if m["action"] == "event"]
    # Only the update and the plain publish were stored after the attach.
    assert [e["type"] for e in events] == ["update", "create"]
    assert [e["serial"] for e in events] == [serial_before + 1, serial_before + 2]
    missing = await a.request("append", channel=channel, msg_serial=9999, data="?")
    assert missing["action"] == "error" and missing["code"] == 40400


# ---------------------------------------------------------------------------- rollup


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_rollup_merges_a_burst_into_fewer_events(store: str, tmp_path: Path) -> None:
    server = _start(store, tmp_path, ROOMCAST_ROLLUP_MS="50", ROOMCAST_MAX_STREAM_BYTES="20000")
    try:
        channel = room()
        a = await WireClient.connect(server.ws_url, client_id="alice")
        b = await WireClient.connect(server.ws_url, client_id="bob")
        await b.request("attach", channel=channel)
        msg_serial = await start_stream(a, channel)
        fragments = [f"f{i:03d}|" for i in range(300)]
        replies = await send_appends(a, channel, msg_serial, fragments, pause=0.0005)
        assert all(r["action"] == "ok" for r in replies)
        acked = [r["serial"] for r in replies]
        assert acked == sorted(acked)  # one message's appends keep their order
        await a.request("update", channel=channel, msg_serial=msg_serial, status="complete")

        events = [await b.next(is_event(channel), 10)]
        while events[-1]["type"] != "update":
            events.append(await b.next(is_event(channel), 10))
        appends = [e for e in events if e["type"] == "append"]
        assert 1 < len(appends) < len(fragments)  # merged, and the first went alone
        assert appends[0]["data"] == fragments[0]
        serials = [e["serial"] for e in events]
        assert serials == list(range(msg_serial, msg_serial + len(events)))  # gap-free
        assert set(acked) == {e["serial"] for e in appends}  # every ack names its event
        assert rebuild(events) == "".join(fragments)
        history = await b.request("history", channel=channel)
        assert history["messages"][0]["data"] == "".join(fragments)

        # Errors inside a burst reach the offending appends only, and spoil no merge.
        msg2 = await start_stream(a, channel)
        big = "x" * 5000
        mixed = await asyncio.gather(
            send_appends(a, channel, msg2, ["a1", big, big, big, big, "a2"]),
            send_appends(b, channel, msg2, ["b1"]),
        )
        codes = [r.get("code", "ok") for r in mixed[0]]
        assert codes == ["ok", "ok", "ok", "ok", 41300, "ok"]  # 20000 bytes at most
        assert mixed[1][0]["code"] == 40900
        message = (await b.request("history", channel=channel))["messages"][-1]
        assert message["data"] == "a1" + big * 3 + "a2"
        for client in (a, b):
            await client.close()
    finally:
        server.close()


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_rollup_zero_makes_one_event_per_append(store: str, tmp_path: Path) -> None:
    server = _start(store, tmp_path, ROOMCAST_ROLLUP_MS="0")
    try:
        channel = room()
        a = await WireClient.connect(server.ws_url, client_id="alice")
        await a.request("attach", channel=channel)
        msg_serial = await start_stream(a, channel)
        fragments = [f"{i}," for i in range(100)]
        replies = await send_appends(a, channel, msg_serial, fragments)
        assert [r["serial"] for r in replies] == list(range(msg_serial + 1, msg_serial + 101))
        events = [e for e in await a.quiet(0.3) if e["action"] == "event"]
        assert [e["data"] for e in events if e["type"] == "append"] == fragments
        await a.close()
    finally:
        server.close()


async def test_a_request_behind_an_append_does_not_wait_for_the_window(tmp_path: Path) -> None:
    # Replies go in order: a request queued behind an append must not wait for the append's
    # rollup window (an agent streams several rooms' answers on one connection).
    server = _start("memory", tmp_path, ROOMCAST_ROLLUP_MS="2000")
    try:
        channel = room()
        a = await WireClient.connect(server.ws_url, client_id="alice")
        msg_serial = await start_stream(a, channel)
        first = await a.request("append", channel=channel, msg_serial=msg_serial, data="one ")
        assert first["action"] == "ok"  # the first append of a burst goes at once
        started = asyncio.get_running_loop().time()
        append_ref, ping_ref = a.next_ref(), a.next_ref()
        await a.send(
            [
                {
                    "action": "append",
                    "channel": channel,
                    "msg_serial": msg_serial,
                    "data": "two",
                    "ref": append_ref,
                },
                {"action": "ping", "ref": ping_ref},
            ]
        )
        ok = await a.next(lambda m: m.get("ref") == append_ref, 5)
        pong = await a.next(lambda m: m.get("ref") == ping_ref, 5)
        assert ok["action"] == "ok" and pong["action"] == "pong"
        assert asyncio.get_running_loop().time() - started < 1.0  # not the 2 s window
        history = await a.request("history", channel=channel)
        assert history["messages"][-1]["data"] == "one two"
        await a.close()
    finally:
        server.close()
