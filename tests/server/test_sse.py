"""Server-Sent Events (docs/protocol.md §7): gap-free resume with Last-Event-ID, the attach
barrier, presence and signals, keep-alives, slow consumers and unsubscribe on close."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from roomcast.protocol.messages import Event, Heartbeat, SignalEvent
from roomcast.server.sse import SseFraming
from roomcast.testing import ServerProcess, WireClient


def room() -> str:
    return f"room:{uuid.uuid4().hex[:10]}"


@dataclass
class SseEvent:
    event: str = "message"
    id: str | None = None
    data: Any = None
    comment: str | None = None


class SseStream:
    """A minimal SSE parser over an httpx streaming response. Lines are read by a task, so
    a timed-out wait loses nothing."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for line in self.response.aiter_lines():
                self._lines.put_nowait(line)
        finally:
            self._lines.put_nowait(None)

    def close(self) -> None:
        self._reader.cancel()

    async def next(self, within: float = 10.0, *, comments: bool = False) -> SseEvent:
        """The next event (or, with ``comments``, comment line) within ``within`` seconds."""
        return await asyncio.wait_for(self._next(comments), within)

    async def _next(self, comments: bool) -> SseEvent:
        event = SseEvent()
        data: list[str] = []
        while True:
            line = await self._lines.get()
            if line is None:
                raise EOFError("the stream ended")
            if line == "":
                if data:
                    event.data = json.loads("\n".join(data))
                    return event
                if event.comment is not None and comments:
                    return event
                event = SseEvent()
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                event.comment = value
            elif name == "data":
                data.append(value)
            elif name == "event":
                event.event = value
            elif name == "id":
                event.id = value

    async def events(self, count: int, within: float = 10.0) -> list[SseEvent]:
        return [await self.next(within) for _ in range(count)]

    async def quiet(self, seconds: float = 0.5) -> list[SseEvent]:
        """Whatever arrives within ``seconds`` (keep-alives left out)."""
        out: list[SseEvent] = []
        try:
            while True:
                out.append(await self.next(seconds))
        except TimeoutError:
            return out


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


class Subscription:
    def __init__(self, http: httpx.AsyncClient, path: str, **kwargs: Any) -> None:
        self._cm = http.stream("GET", path, **kwargs)

    async def __aenter__(self) -> SseStream:
        response = await self._cm.__aenter__()
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        self.stream = SseStream(response)
        return self.stream

    async def __aexit__(self, *exc: object) -> None:
        self.stream.close()
        await self._cm.__aexit__(None, None, None)


async def publish(
    http: httpx.AsyncClient, channel: str, data: list[Any], headers: dict[str, str] | None = None
) -> list[int]:
    response = await http.post(
        f"/v1/channels/{channel}/messages", json=[{"data": d} for d in data], headers=headers
    )
    serials: list[int] = response.json()["msg_serials"]
    return serials


async def test_reconnect_with_last_event_id_gets_exactly_the_missed_events(
    http: httpx.AsyncClient,
) -> None:
    channel = room()
    path = f"/v1/channels/{channel}/events"
    async with Subscription(http, path) as stream:
        attached = await stream.next()
        assert attached.event == "attached" and attached.data["serial"] == 0
        assert attached.id == "0"
        await publish(http, channel, list(range(5)))
        seen = await stream.events(5)
    assert [e.id for e in seen] == ["1", "2", "3", "4", "5"]
    assert [e.data["data"] for e in seen] == list(range(5))

    await publish(http, channel, list(range(5, 12)))  # missed while away
    headers = {"Last-Event-ID": seen[-1].id or ""}
    async with Subscription(http, path, headers=headers) as stream:
        again = await stream.next()
        assert again.event == "attached" and again.data["resumed"] is True
        assert again.data["serial"] == 12 and again.id == "5"
        missed = await stream.events(7)
        assert [int(e.id or 0) for e in missed] == list(range(6, 13))
        assert [e.data["data"] for e in missed] == list(range(5, 12))
        assert await stream.quiet(0.5) == []  # nothing more
        await publish(http, channel, ["live"])
        [live] = await stream.events(1)
        assert live.id == "13" and live.data["data"] == "live"


async def test_events_are_the_websocket_json_and_from_serial_resumes(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    channel = room()
    ws = await WireClient.connect(server.ws_url, client_id="alice")
    await ws.request("attach", channel=channel)
    await publish(http, channel, ["one", {"two": 2}])
    over_ws = await ws.events(channel, 2)
    async with Subscription(http, f"/v1/channels/{channel}/events?from_serial=0") as stream:
        attached = await stream.next()
        assert attached.data["resumed"] is True and attached.id == "0"
        over_sse = await stream.events(2)
        assert [e.data for e in over_sse] == over_ws
        assert [e.event for e in over_sse] == ["message", "message"]
        await ws.request("publish", channel=channel, data="three", name="chat")
        [live] = await stream.events(1)
        assert live.data == (await ws.events(channel, 1))[0]
    await ws.close()


async def test_discontinuity_when_resuming_is_impossible(http: httpx.AsyncClient) -> None:
    channel = room()
    [*_, latest] = await publish(http, channel, [1, 2, 3])
    for query, words in [("from_serial=1&epoch=not-it", "epoch"), ("from_serial=99", "beyond")]:
        async with Subscription(http, f"/v1/channels/{channel}/events?{query}") as stream:
            attached = await stream.next()
            assert attached.data["resumed"] is False and attached.id == str(latest)
            gone = await stream.next()
            assert gone.event == "discontinuity" and words in gone.data["reason"]
            assert await stream.quiet(0.3) == []  # no replay
            [latest] = await publish(http, channel, ["after"])
            [live] = await stream.events(1)
            assert live.data["data"] == "after"


async def test_rewind_and_presence_and_signals(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    channel = room()
    await publish(http, channel, list(range(5)))
    alice = await WireClient.connect(server.ws_url, client_id="alice")
    await alice.request("presence", channel=channel, op="enter", data={"kind": "human"})
    async with Subscription(http, f"/v1/channels/{channel}/events?rewind=2") as stream:
        attached = await stream.next()
        assert [m["data"] for m in attached.data["messages"]] == [3, 4]
        assert [p["client_id"] for p in attached.data["presence"]] == ["alice"]
        await alice.request("presence", channel=channel, op="update", data={"kind": "away"})
        await alice.send({"action": "signal", "channel": channel, "name": "typing", "data": True})
        presence, signal = await stream.events(2)
        assert presence.event == "presence" and presence.id is None
        assert presence.data["op"] == "update" and presence.data["data"] == {"kind": "away"}
        assert signal.event == "signal" and signal.data["name"] == "typing"
    await alice.close()


async def test_long_replay_with_live_events_has_no_gap_or_duplicate(
    http: httpx.AsyncClient,
) -> None:
    channel = room()
    for start in range(0, 6000, 1000):
        await publish(http, channel, list(range(start, start + 1000)))
    async with Subscription(http, f"/v1/channels/{channel}/events?from_serial=0") as stream:
        attached = await stream.next()
        assert attached.data["serial"] == 6000
        live = asyncio.create_task(publish(http, channel, list(range(6000, 6050))))
        got = await stream.events(6050, within=30)
        await live
        assert [int(e.id or 0) for e in got] == list(range(1, 6051))
        assert await stream.quiet(0.3) == []


async def test_closing_the_stream_unsubscribes(http: httpx.AsyncClient) -> None:
    channel = room()
    await publish(http, channel, [1])

    async def occupancy() -> int:
        items = (await http.get("/v1/channels", params={"prefix": channel})).json()["items"]
        return int(items[0]["occupancy"])

    async with Subscription(http, f"/v1/channels/{channel}/events") as stream:
        await stream.next()
        assert await occupancy() == 1
    for _ in range(50):
        if await occupancy() == 0:
            break
        await asyncio.sleep(0.05)
    assert await occupancy() == 0


async def test_bad_last_event_id_is_40000(http: httpx.AsyncClient) -> None:
    response = await http.get(
        f"/v1/channels/{room()}/events", headers={"Last-Event-ID": "not-a-serial"}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == 40000


@pytest.fixture(scope="module")
def tight_server(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    env = {**test_env, "ROOMCAST_OUTBOUND_QUEUE": "32", "ROOMCAST_HEARTBEAT_S": "0.5"}
    with ServerProcess(env=env) as proc:
        yield proc


async def test_idle_stream_gets_keep_alive_comments(tight_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=tight_server.url) as http:
        async with Subscription(http, f"/v1/channels/{room()}/events") as stream:
            await stream.next()
            beat = await stream.next(within=3, comments=True)
            assert beat.comment == "keep-alive" and beat.data is None


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise KeyError(name)


async def test_slow_stream_is_ended_and_counted(tight_server: ServerProcess) -> None:
    channel = room()
    # A client that asks for the stream and then never reads: its socket fills, then the
    # server's queue does, and the server ends the stream.
    _reader, writer = await asyncio.open_connection("127.0.0.1", tight_server.port)
    writer.write(f"GET /v1/channels/{channel}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    async with httpx.AsyncClient(base_url=tight_server.url, timeout=30) as http:
        for _ in range(100):  # until the stream is subscribed
            text = (await http.get("/metrics")).text
            if metric(text, "roomcast_connections", transport="sse") == 1:
                break
            await asyncio.sleep(0.05)
        payload = "x" * 4000
        for _ in range(8):
            await publish(http, channel, [payload] * 500)
        for _ in range(100):
            text = (await http.get("/metrics")).text
            if metric(text, "roomcast_connections", transport="sse") == 0:
                break
            await asyncio.sleep(0.05)
        assert metric(text, "roomcast_connections", transport="sse") == 0
        assert metric(text, "roomcast_slow_consumers_dropped_total") >= 1
    writer.close()


SSE_KEY = "ops:" + "e" * 32


@pytest.fixture(scope="module")
def keyed_server(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    with ServerProcess(env={**test_env, "ROOMCAST_KEYS": SSE_KEY}) as proc:
        yield proc


async def test_stream_ends_with_an_error_when_its_token_expires(
    keyed_server: ServerProcess,
) -> None:
    """Live events flow until the token's exp (+1 s leeway); then `event: error` 40100 and
    the end of the stream. A key's stream has no expiry."""
    channel = room()
    path = f"/v1/channels/{channel}/events"
    auth = {"Authorization": f"Bearer {SSE_KEY}"}
    async with httpx.AsyncClient(base_url=keyed_server.url, timeout=30) as http:
        issued = await http.post(
            "/v1/tokens", json={"client_id": "viewer", "ttl_s": 2}, headers=auth
        )
        token = issued.json()["token"]
        expires_at = issued.json()["expires_at"] / 1000
        async with (
            Subscription(http, path, params={"token": token}) as stream,
            Subscription(http, path, headers=auth) as by_key,
        ):
            assert (await stream.next()).event == "attached"
            assert (await by_key.next()).event == "attached"
            await publish(http, channel, ["before expiry"], headers=auth)
            assert (await stream.next()).data["data"] == "before expiry"
            error = await stream.next(within=10)
            loop = asyncio.get_running_loop()
            ended_at = loop.time()
            assert error.event == "error"
            assert error.data["error"]["code"] == 40100
            assert error.data["error"]["message"] == "token expired"
            assert len(error.data["error"]["correlation_id"]) == 16
            assert time.time() >= expires_at  # not before exp
            with pytest.raises(EOFError):
                await stream.next(within=5)
            assert loop.time() - ended_at < 5
            # The key's stream goes on.
            await publish(http, channel, ["after expiry"], headers=auth)
            event = await by_key.next()
            while event.data.get("data") != "after expiry":
                event = await by_key.next()
        # Coming back with the expired token is refused.
        response = await http.get(path, params={"token": token})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == 40100


def test_sse_framing_of_each_kind_of_message() -> None:
    framing = SseFraming()
    event = Event(channel="room:f", serial=7, type="create", client_id="a", timestamp=1, data="hi")
    chunk = framing.encode(event)
    assert chunk.startswith(b"id: 7\ndata: {") and chunk.endswith(b"}\n\n")
    assert json.loads(chunk.split(b"data: ", 1)[1])["data"] == "hi"
    signal = SignalEvent(channel="room:f", client_id="a", name="typing", data=None)
    assert framing.encode(signal).startswith(b"event: signal\ndata: {")
    assert framing.encode(Heartbeat()) == b": keep-alive\n\n"
    assert framing.join([b"a", b"b"]) == b"ab"


async def test_types_limits_the_stream_to_events_of_those_types(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    channel = room()
    client = await WireClient.connect(server.ws_url, client_id="alice")
    created = await client.request("publish", channel=channel, data="", streaming=True)
    await client.request("append", channel=channel, msg_serial=created["serial"], data="a")
    path = f"/v1/channels/{channel}/events?types=create,update&from_serial=0"
    async with Subscription(http, path) as stream:
        assert (await stream.next()).event == "attached"
        await client.request("append", channel=channel, msg_serial=created["serial"], data="b")
        await client.request(
            "update", channel=channel, msg_serial=created["serial"], status="complete"
        )
        seen = await stream.events(2)
        assert [(e.id, e.data["type"]) for e in seen] == [("1", "create"), ("4", "update")]
    refused = await http.get(f"/v1/channels/{channel}/events?types=typing")
    assert refused.status_code == 400
    await client.close()
