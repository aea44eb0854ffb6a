"""Live objects over the wire (docs/protocol.md §5): the `object` action, `attached.objects`,
and `GET|POST /v1/channels/{channel}/objects`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from roomcast.testing import ServerProcess, WireClient


@pytest.fixture(scope="module")
def small(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    """A server whose channels may hold only 400 bytes of objects."""
    env = {**test_env, "ROOMCAST_MAX_OBJECTS_BYTES": "400"}
    with ServerProcess(store="memory://", env=env) as proc:
        yield proc


def room() -> str:
    return f"room:{uuid.uuid4().hex[:8]}"


async def test_ops_are_events_and_attached_carries_the_snapshot(server: ServerProcess) -> None:
    channel = room()
    async with (
        await WireClient.connect(server.ws_url, client_id="alice") as alice,
        await WireClient.connect(server.ws_url, client_id="bob") as bob,
    ):
        attached = await bob.request("attach", channel=channel)
        assert attached["objects"] == {
            "serial": 0,
            "objects": {"root": {"type": "map", "entries": {}}},
        }
        ok = await alice.request("object", channel=channel, op={"type": "counter.create"})
        assert ok == {"action": "ok", "ref": ok["ref"], "serial": 1, "object_id": "counter-1"}
        inc = {"type": "counter.inc", "object_id": "counter-1", "amount": 2.5}
        assert (await alice.request("object", channel=channel, op=inc))["serial"] == 2
        ref = {"object_id": "counter-1"}
        set_root = {"type": "map.set", "object_id": "root", "key": "score", "value": ref}
        await alice.request("object", channel=channel, op=set_root)
        events = await bob.events(channel, 3)
        assert [e["type"] for e in events] == ["object"] * 3
        assert events[0]["object_id"] == "counter-1" and events[0]["client_id"] == "alice"
        assert events[0]["op"] == {"type": "counter.create", "value": 0}
        assert "msg_serial" not in events[0] and "object_id" not in events[1]

        late = await alice.request("attach", channel=channel)
        assert late["objects"] == {
            "serial": 3,
            "objects": {
                "root": {"type": "map", "entries": {"score": {"object_id": "counter-1"}}},
                "counter-1": {"type": "counter", "value": 2.5},
            },
        }
        async with httpx.AsyncClient(base_url=server.url) as http:
            response = await http.get(f"/v1/channels/{channel}/objects")
        assert response.status_code == 200 and response.json() == late["objects"]


async def test_rest_applies_ops(server: ServerProcess) -> None:
    channel = room()
    async with httpx.AsyncClient(base_url=server.url) as http:
        url = f"/v1/channels/{channel}/objects"
        made = await http.post(url, json={"op": {"type": "map.create", "entries": {"a": 1}}})
        assert made.status_code == 200 and made.json() == {"serial": 1, "object_id": "map-1"}
        op = {"type": "map.set", "object_id": "map-1", "key": "b", "value": [1, 2]}
        changed = await http.post(url, json={"op": op})
        assert changed.json() == {"serial": 2}
        state = (await http.get(url)).json()
        assert state["objects"]["map-1"] == {"type": "map", "entries": {"a": 1, "b": [1, 2]}}
        bad = await http.post(url, json={"op": {"type": "map.explode"}})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == 40000


async def refused(
    ws: WireClient, http: httpx.AsyncClient, channel: str, op: dict[str, Any], code: int
) -> None:
    """``op`` is refused with ``code`` on both transports, and the channel is unchanged."""
    url = f"/v1/channels/{channel}/objects"
    before = (await http.get(url)).json()
    reply = await ws.request("object", channel=channel, op=op)
    assert reply["action"] == "error" and reply["code"] == code, reply
    response = await http.post(url, json={"op": op})
    assert response.status_code == code // 100, response.text
    assert response.json()["error"]["code"] == code
    assert (await http.get(url)).json() == before


async def test_refusals_change_nothing(small: ServerProcess) -> None:
    channel = room()
    async with (
        await WireClient.connect(small.ws_url, client_id="alice") as ws,
        httpx.AsyncClient(base_url=small.url) as http,
    ):
        await ws.request("object", channel=channel, op={"type": "counter.create", "value": 1})
        unknown = {"type": "map.set", "object_id": "map-77", "key": "k", "value": 1}
        await refused(ws, http, channel, unknown, 40400)
        on_counter = {"type": "map.set", "object_id": "counter-1", "key": "k", "value": 1}
        await refused(ws, http, channel, on_counter, 40900)
        dangling = {"type": "map.set", "object_id": "root", "key": "k", "value": {"object_id": "x"}}
        await refused(ws, http, channel, dangling, 40400)
        too_big = {"type": "map.set", "object_id": "root", "key": "k", "value": "x" * 500}
        await refused(ws, http, channel, too_big, 41300)
        # The connection is still usable, and a write that fits is taken.
        fits = {"type": "map.set", "object_id": "root", "key": "k", "value": "x" * 100}
        assert (await ws.request("object", channel=channel, op=fits))["serial"] == 2
