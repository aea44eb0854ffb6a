"""docs/protocol.md §1 and §8: the server refuses at the door (40000, or 1007 for a frame it
cannot decode) what a store or a wire format cannot hold: integers beyond 64 bits, numbers
that are not finite, map keys that are not strings, raw bytes, values nested too deeply,
serials beyond what a store keeps, and channel names that are not whole ``:`` segments. It
answers over the WebSocket (JSON and MessagePack) and over HTTP alike, never with a 5xx or a
dropped connection, and stores nothing of what it refused."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import msgspec
import pytest
from websockets.asyncio.client import connect

from roomcast.testing import ServerProcess, WireClient

BIG = 2**64  # one more than the largest unsigned 64-bit integer
HUGE_SERIAL = 2**63  # one more than SQLite's largest INTEGER


def room() -> str:
    return f"room:{uuid.uuid4().hex[:10]}"


def nested(depth: int) -> str:
    """A JSON value nested ``depth`` arrays deep."""
    return "[" * depth + "]" * depth


async def stored_serial(client: WireClient, channel: str) -> int:
    attached = await client.request("attach", channel=channel)
    assert attached["action"] == "attached", attached
    await client.request("detach", channel=channel)
    return int(attached["serial"])


INFINITY = "<1e400>"  # JSON text for a number too large for a float: infinity
DEEP = "<100 deep>"


def json_text(request: dict[str, Any]) -> str:
    text = json.dumps(request)
    return text.replace(f'"{INFINITY}"', "1e400").replace(f'"{DEEP}"', nested(100))


# Each request holds one value that not every wire format can carry, or a number that no
# store keeps.
JSON_REFUSED: dict[str, dict[str, Any]] = {
    "int over 64 bits in data": {"action": "publish", "data": BIG},
    "int under -2**63 in extras": {"action": "publish", "data": "x", "extras": {"n": -BIG}},
    "infinity in data": {"action": "publish", "data": [INFINITY]},
    "int over 64 bits in presence": {"action": "presence", "op": "enter", "data": {"n": BIG}},
    "infinity in a signal": {"action": "signal", "name": "typing", "data": INFINITY},
    "int over 64 bits in an object": {
        "action": "object",
        "op": {"type": "map.create", "entries": {"a": BIG}},
    },
    "a counter at infinity": {
        "action": "object",
        "op": {"type": "counter.create", "value": INFINITY},
    },
    "nested too deep": {"action": "publish", "data": DEEP},
    "from_serial at 2**63": {"action": "attach", "from_serial": HUGE_SERIAL},
    "msg_serial at 2**63": {"action": "append", "msg_serial": HUGE_SERIAL, "data": "x"},
    "before at 2**63": {"action": "history", "before": HUGE_SERIAL},
    "after at 2**64": {"action": "history", "after": BIG},
}


@pytest.mark.parametrize("request_", list(JSON_REFUSED.values()), ids=list(JSON_REFUSED))
async def test_a_json_value_no_format_can_carry_gets_40000(
    server: ServerProcess, request_: dict[str, Any]
) -> None:
    channel = room()
    async with await WireClient.connect(server.ws_url, client_id="alice") as a:
        ref = a.next_ref()
        await a.send(json_text({**request_, "channel": channel, "ref": ref}))
        error = await a.next(lambda m: m.get("ref") == ref)
        assert error["action"] == "error" and error["code"] == 40000, error
        assert (await a.request("ping"))["action"] == "pong"
        assert await stored_serial(a, channel) == 0


@pytest.mark.parametrize("ref", [BIG, -(2**63) - 1])
async def test_a_ref_beyond_64_bits_is_refused_without_echoing_it(
    server: ServerProcess, ref: int
) -> None:
    async with await WireClient.connect(server.ws_url, client_id="alice") as a:
        await a.send(json.dumps({"action": "ping", "ref": ref}))
        error = await a.next(lambda m: m["action"] == "error")
        assert error["code"] == 40000 and "ref" not in error, error


async def test_a_frame_too_deep_to_decode_closes_with_1007(server: ServerProcess) -> None:
    async with await WireClient.connect(server.ws_url, client_id="alice") as a:
        await a.send(f'{{"action":"publish","channel":"room:deep","data":{nested(20_000)}}}')
        await asyncio.wait_for(a.closed.wait(), 5)
        assert a.close_code == 1007
    async with await WireClient.connect(server.ws_url, client_id="alice") as b:
        await b.send(nested(20_000))
        await asyncio.wait_for(b.closed.wait(), 5)
        assert b.close_code == 1007
    assert "Traceback" not in server.output()


MSGPACK_REFUSED: dict[str, dict[str, Any]] = {
    "NaN in data": {"action": "publish", "data": float("nan")},
    "infinity in extras": {"action": "publish", "data": "x", "extras": {"v": float("inf")}},
    "an integer map key": {"action": "publish", "data": {1: "one"}},
    "raw bytes": {"action": "publish", "data": b"\x00\x01"},
    "an extension type": {"action": "publish", "data": msgspec.msgpack.Ext(1, b"x")},
    "a timestamp": {"action": "signal", "name": "t", "data": msgspec.msgpack.Ext(-1, b"\0" * 4)},
    "bytes in presence": {"action": "presence", "op": "enter", "data": {"k": b"\xff"}},
    "NaN in an object": {
        "action": "object",
        "op": {"type": "map.set", "object_id": "m", "key": "k", "value": float("nan")},
    },
    "msg_serial at 2**63": {"action": "delete", "msg_serial": HUGE_SERIAL},
    "from_serial at 2**64 - 1": {"action": "attach", "from_serial": BIG - 1},
}


@pytest.mark.parametrize("request_", list(MSGPACK_REFUSED.values()), ids=list(MSGPACK_REFUSED))
async def test_a_msgpack_value_json_cannot_carry_gets_40000(
    server: ServerProcess, request_: dict[str, Any]
) -> None:
    channel = room()
    async with connect(server.ws_url + "?client_id=packer&format=msgpack") as ws:
        assert msgspec.msgpack.decode(await ws.recv())["action"] == "connected"
        await ws.send(msgspec.msgpack.encode({**request_, "channel": channel, "ref": 7}))
        await ws.send(msgspec.msgpack.encode({"action": "attach", "channel": channel, "ref": 8}))
        replies: dict[int, dict[str, Any]] = {}
        while 8 not in replies:
            decoded = msgspec.msgpack.decode(await ws.recv())
            for reply in decoded if isinstance(decoded, list) else [decoded]:
                replies[reply.get("ref", 0)] = reply
    assert replies[7]["action"] == "error" and replies[7]["code"] == 40000, replies[7]
    assert replies[8]["serial"] == 0


BAD_CHANNELS = ["room:x\n", "room:", "room:lunch:", ":x", "a::b", "room::x", "x" * 201]


@pytest.mark.parametrize("channel", BAD_CHANNELS)
async def test_a_channel_name_that_is_not_whole_segments_gets_40000(
    server: ServerProcess, channel: str
) -> None:
    async with await WireClient.connect(server.ws_url, client_id="alice") as a:
        for action, fields in [("publish", {"data": 1}), ("attach", {})]:
            error = await a.request(action, channel=channel, **fields)
            assert error["action"] == "error" and error["code"] == 40000, error
            assert "channel" in error["message"]


# ---------------------------------------------------------------------------------- HTTP


REST_REFUSED = {
    "int over 64 bits": ("POST", "/messages", b'{"data": %d}' % BIG),
    "infinity": ("POST", "/messages", b'{"data": 1e400}'),
    "nested too deep": ("POST", "/messages", b'{"data": %s}' % nested(100).encode()),
    "5,000 deep": ("POST", "/messages", nested(5000).encode()),
    "20,000 deep in data": ("POST", "/messages", b'{"data": %s}' % nested(20_000).encode()),
    "in a batch": ("POST", "/messages", b'[{"data": 1}, {"data": {"x": %d}}]' % BIG),
    "in extras": ("PATCH", "/messages/1", b'{"extras": {"n": %d}}' % BIG),
    "in an object": (
        "POST",
        "/objects",
        b'{"op": {"type": "map.set", "object_id": "m", "key": "k", "value": %d}}' % BIG,
    ),
    "msg_serial at 2**63": ("PATCH", f"/messages/{HUGE_SERIAL}", b'{"data": "x"}'),
    "msg_serial at 2**64": ("POST", f"/messages/{BIG}/append", b'{"data": "x"}'),
    "before at 2**63": ("GET", f"/messages?before={HUGE_SERIAL}", b""),
    "after at 2**63": ("GET", f"/messages?after={HUGE_SERIAL}", b""),
    "from_serial at 2**63": ("GET", f"/events?from_serial={HUGE_SERIAL}", b""),
}


@pytest.mark.parametrize(("method", "path", "body"), REST_REFUSED.values(), ids=list(REST_REFUSED))
async def test_an_http_body_no_format_can_carry_gets_400(
    server: ServerProcess, method: str, path: str, body: bytes
) -> None:
    channel = room()
    headers = {"Content-Type": "application/json"} if body else {}
    async with httpx.AsyncClient(base_url=server.url + f"/v1/channels/{channel}") as http:
        if method == "PATCH":
            made = await http.post("/messages", json={"data": "first"})
            assert made.json() == {"msg_serial": 1}
        response = await http.request(method, path, content=body, headers=headers)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == 40000
        history = (await http.get("/messages")).json()["items"]
        assert [m["data"] for m in history] == (["first"] if method == "PATCH" else [])
    assert "Traceback" not in server.output()


@pytest.mark.parametrize("channel", ["room:x%0A", "room:", "room:lunch:", ":x", "a::b"])
async def test_an_http_channel_that_is_not_whole_segments_gets_400(
    server: ServerProcess, channel: str
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.post(f"/v1/channels/{channel}/messages", json={"data": 1})
        assert response.status_code == 400, response.text
        assert "channel" in response.json()["error"]["message"]
