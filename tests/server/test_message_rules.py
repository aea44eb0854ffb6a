"""The rules a message keeps after it is published (docs/protocol.md §3), as the wire answers
them from a real ``roomcast serve``: its size after a change, a deleted message, an append to
data that is not text; and what attaching to a channel with no events leaves behind."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_streams import _start, room, send_appends, start_stream

from roomcast.testing import ServerProcess, WireClient


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    proc = _start(
        request.param, tmp_path_factory.mktemp("rules"), ROOMCAST_MAX_MESSAGE_BYTES="4096"
    )
    yield proc
    proc.close()


async def test_updates_and_reactions_cannot_grow_a_message_past_the_limit(
    server: ServerProcess,
) -> None:
    channel = room()
    async with await WireClient.connect(server.ws_url, client_id="alice") as a:
        serial = (await a.request("publish", channel=channel, data="hi"))["serial"]
        patch = {"action": "update", "channel": channel, "msg_serial": serial}
        ok = await a.request(**patch, extras={"a": "x" * 3000})
        assert ok["action"] == "ok", ok
        refused = await a.request(**patch, extras={"b": "y" * 3000})
        assert refused["action"] == "error" and refused["code"] == 41300, refused
        assert f"message {serial} would take" in refused["message"]
        for i in range(100):
            name = f"reaction-{i:03}-" + "r" * 40
            reply = await a.request(
                "annotate", channel=channel, msg_serial=serial, kind="reaction", name=name, op="add"
            )
            if reply["action"] == "error":
                assert reply["code"] == 41300, reply
                break
        else:
            raise AssertionError("the reactions summary grew without a bound")
        [message] = (await a.request("history", channel=channel))["messages"]
        assert set(message["extras"]) == {"a"}


async def test_a_deleted_message_refuses_changes_with_409(server: ServerProcess) -> None:
    channel = room()
    async with await WireClient.connect(server.ws_url, client_id="alice") as a:
        serial = await start_stream(a, channel)
        assert (await a.request("delete", channel=channel, msg_serial=serial))["action"] == "ok"
        target = {"channel": channel, "msg_serial": serial}
        replies = [
            await a.request("update", **target, data="back"),
            await a.request("cancel", **target),
            await a.request("annotate", **target, kind="reaction", name="x", op="add"),
            *(await send_appends(a, channel, serial, ["more"])),
        ]
        for reply in replies:
            assert reply["action"] == "error" and reply["code"] == 40900, reply
            assert reply["message"] == f"message {serial} is deleted: it takes no more changes"
        again = await a.request("delete", **target)
        assert again["action"] == "ok" and "serial" not in again  # a no-op


async def test_an_append_after_data_became_an_object_is_409(server: ServerProcess) -> None:
    channel = room()
    async with await WireClient.connect(server.ws_url, client_id="alice") as a:
        serial = await start_stream(a, channel)
        await send_appends(a, channel, serial, ["Hel"])
        ok = await a.request("update", channel=channel, msg_serial=serial, data={"parts": ["Hel"]})
        assert ok["action"] == "ok", ok
        [refused] = await send_appends(a, channel, serial, ["lo"])
        assert refused["action"] == "error" and refused["code"] == 40900, refused
        assert refused["message"] == (
            f"message {serial}'s data is not text: it cannot be appended to"
        )
        [message] = (await a.request("history", channel=channel))["messages"]
        assert message["data"] == {"parts": ["Hel"]}


async def test_attaching_to_unused_channels_leaves_nothing_and_resumes_without_a_gap(
    tmp_path: Path,
) -> None:
    proc = _start("sqlite", tmp_path)
    try:
        async with await WireClient.connect(proc.ws_url, client_id="reader") as r:
            for i in range(200):
                channel = f"room:unused-{i}"
                assert (await r.request("attach", channel=channel))["action"] == "attached"
                assert (await r.request("detach", channel=channel))["action"] == "detached"
            channel = room()
            empty = await r.request("attach", channel=channel)
            await r.request("detach", channel=channel)
        async with await WireClient.connect(proc.ws_url, client_id="writer") as w:
            assert (await w.request("publish", channel=channel, data="first"))["action"] == "ok"
        async with await WireClient.connect(proc.ws_url, client_id="reader") as r:
            back = await r.request("attach", channel=channel, from_serial=0, epoch=empty["epoch"])
            assert back["resumed"] is True and back["epoch"] == empty["epoch"], back
            replayed = await r.next(lambda m: m["action"] in ("event", "discontinuity"))
            assert replayed["action"] == "event" and replayed["data"] == "first", replayed
        conn = sqlite3.connect(tmp_path / "roomcast.db")
        try:
            rows = conn.execute("SELECT name FROM channels").fetchall()
        finally:
            conn.close()
        assert sorted(name for (name,) in rows) == sorted([channel, "meta:channels"])
    finally:
        proc.close()
