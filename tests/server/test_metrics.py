"""``/metrics``: Prometheus text whose gauges and counters follow what the server does."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families

from roomcast.server import create_app
from roomcast.settings import Settings
from roomcast.testing import ServerProcess, WireClient


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


async def test_counters_and_gauges_move_after_a_publish(server: ServerProcess) -> None:
    channel = f"room:{uuid.uuid4().hex[:10]}"
    route = "/v1/channels/{channel}/messages"
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        before = response.text

        subscribers = [await WireClient.connect(server.ws_url, client_id=f"s{k}") for k in range(3)]
        for client in subscribers:
            await client.request("attach", channel=channel)
        await http.post(f"/v1/channels/{channel}/messages", json=[{"data": 1}, {"data": 2}])
        await subscribers[0].request("publish", channel=channel, data=3)
        for client in subscribers:
            await client.events(channel, 3)
        await http.get(f"/v1/channels/{channel}/messages")
        during = (await http.get("/metrics")).text
        for client in subscribers:
            await client.close()

    def delta(name: str, **labels: str) -> float:
        return value(during, name, **labels) - value(before, name, **labels)

    assert delta("roomcast_events_total") >= 3  # and the meta:channels announcement
    assert delta("roomcast_deliveries_total") >= 9  # 3 events x 3 subscribers
    assert delta("roomcast_http_requests_total", method="POST", route=route, status="200") == 1
    assert delta("roomcast_http_requests_total", method="GET", route=route, status="200") == 1
    assert delta("roomcast_store_append_seconds_count", op="append_batch") == 1
    assert delta("roomcast_store_append_seconds_count", op="append") >= 1
    assert delta("roomcast_store_read_seconds_count", op="history") >= 1
    # Three attaches with no event in between: one snapshot read, shared by the other two.
    assert delta("roomcast_store_read_seconds_count", op="snapshot") >= 1
    assert delta("roomcast_attach_snapshots_total", source="store") >= 1
    attaches = sum(delta("roomcast_attach_snapshots_total", source=s) for s in ("store", "shared"))
    assert attaches >= 3
    assert value(during, "roomcast_connections", transport="websocket") >= 3
    assert value(during, "roomcast_channels") >= 1
    assert "roomcast_slow_consumers_dropped_total" in during


async def test_each_app_has_its_own_registry() -> None:
    apps = [create_app(Settings(store="memory://"), manage_node=False) for _ in range(2)]
    for app in apps:
        await app.state.node.start()
    try:
        clients = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")
            for app in apps
        ]
        for http in clients:
            await http.post("/v1/channels/room:a/messages", json={"data": 1})
        await asyncio.sleep(0.1)  # the meta:channels announcements are written in the background
        texts = [(await http.get("/metrics")).text for http in clients]
        for http in clients:
            await http.aclose()
    finally:
        for app in apps:
            await app.state.node.stop()
    for text in texts:  # one publish and one announcement each, not shared
        assert value(text, "roomcast_events_total") == 2
