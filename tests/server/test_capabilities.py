"""The capability matrix (docs/protocol.md §6): each operation allowed and denied, over the
WebSocket and REST. A denied operation gets 40300 and changes nothing in the store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from roomcast.core.authz import OPERATIONS
from roomcast.testing import ServerProcess, WireClient

SECRET = "m" * 32
KEY = f"ops:{SECRET}"
OWN_ANY = {"update", "delete", "cancel"}


@pytest.fixture(scope="module")
def keyed(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    with ServerProcess(env={**test_env, "ROOMCAST_KEYS": KEY}) as proc:
        yield proc


def capability_without(operation: str) -> dict[str, list[str]]:
    """Every operation on room:* except ``operation`` (and its -own/-any forms)."""
    names = {operation, f"{operation}-own", f"{operation}-any"}
    return {"room:*": sorted(OPERATIONS - names)}


def capability_with(operation: str) -> dict[str, list[str]]:
    """Only what the probe below needs: attach/publish to set up, and ``operation``."""
    ops = {"subscribe", "publish"}
    ops |= {f"{operation}-own"} if operation in OWN_ANY else {operation}
    if operation == "agent-admin":  # root.agents is a live object: writing it is also that
        ops.add("object-publish")
    return {"room:*": sorted(ops)}


async def token_for(server: ServerProcess, capability: dict[str, list[str]]) -> str:
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.post(
            "/v1/tokens",
            json={"client_id": "alice", "capability": capability},
            headers={"Authorization": f"Bearer {KEY}"},
        )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def setup_channel(server: ServerProcess) -> tuple[str, WireClient, int, int]:
    """A channel with alice's plain message and her streaming one; an admin watching it."""
    channel = f"room:{uuid.uuid4().hex[:8]}"
    admin = await WireClient.connect(server.ws_url, key=KEY, client_id="alice")
    await admin.request("attach", channel=channel)
    plain = (await admin.request("publish", channel=channel, data="hi"))["serial"]
    stream = await admin.request("publish", channel=channel, data="", streaming=True)
    return channel, admin, plain, stream["serial"]


def ws_probe(operation: str, channel: str, plain: int, stream: int) -> dict[str, Any]:
    return {
        "publish": {"action": "publish", "channel": channel, "data": "x"},
        "subscribe": {"action": "attach", "channel": channel},
        "presence": {"action": "presence", "channel": channel, "op": "enter", "data": 1},
        "history": {"action": "history", "channel": channel},
        "annotate": {
            "action": "annotate",
            "channel": channel,
            "msg_serial": plain,
            "kind": "reaction",
            "name": "👍",
            "op": "add",
        },
        "cancel": {"action": "cancel", "channel": channel, "msg_serial": stream},
        "update": {"action": "update", "channel": channel, "msg_serial": plain, "data": "y"},
        "delete": {"action": "delete", "channel": channel, "msg_serial": plain},
        "signal": {"action": "signal", "channel": channel, "name": "typing"},
        "claim": {"action": "claim", "channel": channel, "key": "k", "ttl_s": 5},
        "object-publish": {
            "action": "object",
            "channel": channel,
            "op": {"type": "counter.create", "value": 1},
        },
        "object-subscribe": {"action": "attach", "channel": channel},
        "agent-admin": {"action": "object", "channel": channel, "op": AGENTS_OP},
    }[operation]


AGENTS_OP = {"type": "map.set", "object_id": "root", "key": "agents", "value": {}}


WS_OPERATIONS = [
    "publish", "subscribe", "presence", "history", "annotate", "cancel", "update", "delete",
    "signal", "claim", "object-publish", "object-subscribe", "agent-admin",
]  # fmt: skip
WRITES = {"publish", "annotate", "cancel", "update", "delete", "object-publish", "agent-admin"}


async def latest_serial(admin: WireClient, channel: str) -> int:
    """The channel's latest serial, as a fresh ``attached`` reports it."""
    serial: int = (await admin.request("attach", channel=channel))["serial"]
    return serial


@pytest.mark.parametrize("operation", WS_OPERATIONS)
@pytest.mark.parametrize("allowed", [True, False])
async def test_websocket_operation(keyed: ServerProcess, operation: str, allowed: bool) -> None:
    channel, admin, plain, stream = await setup_channel(keyed)
    capability = capability_with(operation) if allowed else capability_without(operation)
    client = await WireClient.connect(keyed.ws_url, token=await token_for(keyed, capability))
    before = await latest_serial(admin, channel)
    request = ws_probe(operation, channel, plain, stream)
    ref = client.next_ref()
    await client.send({**request, "ref": ref})
    if operation == "signal" and allowed:
        signal = await admin.next(lambda m: m["action"] == "signal")
        assert signal["client_id"] == "alice"
    elif operation == "object-subscribe":  # without it, `attached.objects` is left out
        reply = await client.next(lambda m: m.get("ref") == ref)
        assert reply["action"] == "attached"
        assert ("objects" in reply) is allowed, reply
    else:
        reply = await client.next(lambda m: m.get("ref") == ref)
        if allowed:
            assert reply["action"] != "error", reply
        else:
            assert reply["action"] == "error" and reply["code"] == 40300, reply
    after = await latest_serial(admin, channel)
    if not allowed or operation not in WRITES:
        assert after == before  # a refusal (or a read) changes nothing
    else:
        assert after == before + 1
    if not allowed and operation == "presence":
        members = (await admin.request("attach", channel=channel))["presence"]
        assert members == []
    await client.close()
    await admin.close()


@pytest.mark.parametrize(
    ("operation", "method", "path", "body"),
    [
        ("publish", "POST", "/messages", {"data": "x"}),
        ("history", "GET", "/messages", None),
        ("presence", "GET", "/presence", None),
        ("update", "PATCH", "/messages/{plain}", {"data": "y"}),
        ("delete", "DELETE", "/messages/{plain}", None),
        ("cancel", "POST", "/messages/{stream}/cancel", {}),
        ("annotate", "POST", "/messages/{plain}/annotations", {"kind": "reaction", "name": "x", "op": "add"}),  # noqa: E501
        ("object-publish", "POST", "/objects", {"op": {"type": "counter.create", "value": 1}}),
        ("object-subscribe", "GET", "/objects", None),
        ("agent-admin", "POST", "/objects", {"op": AGENTS_OP}),
    ],
)  # fmt: skip
@pytest.mark.parametrize("allowed", [True, False])
async def test_rest_operation(
    keyed: ServerProcess,
    operation: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    allowed: bool,
) -> None:
    channel, admin, plain, stream = await setup_channel(keyed)
    capability = capability_with(operation) if allowed else capability_without(operation)
    if operation == "presence":  # GET presence needs `subscribe` (§6 reads)
        capability = {"room:*": ["subscribe"]} if allowed else capability_without("subscribe")
    token = await token_for(keyed, capability)
    before = await latest_serial(admin, channel)
    url = f"/v1/channels/{channel}" + path.format(plain=plain, stream=stream)
    async with httpx.AsyncClient(base_url=keyed.url) as http:
        response = await http.request(
            method, url, json=body, headers={"Authorization": f"Bearer {token}"}
        )
    if allowed:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == 40300
    after = await latest_serial(admin, channel)
    if not allowed or method == "GET":
        assert after == before
    else:
        assert after == before + 1
    await admin.close()


async def test_sse_needs_subscribe(keyed: ServerProcess) -> None:
    channel, admin, _, _ = await setup_channel(keyed)
    denied = await token_for(keyed, capability_without("subscribe"))
    allowed = await token_for(keyed, {"room:*": ["subscribe"]})
    async with httpx.AsyncClient(base_url=keyed.url) as http:
        refused = await http.get(f"/v1/channels/{channel}/events?token={denied}")
        assert refused.status_code == 403
        async with http.stream(
            "GET", f"/v1/channels/{channel}/events", params={"token": allowed}
        ) as stream:
            assert stream.status_code == 200
    await admin.close()
