"""``/metrics``: Prometheus text, from a registry of the app's own (so several apps can live
in one process, as in tests).

The hot paths keep plain integers (:class:`~roomcast.core.node.NodeStats`, the events count
here) or state the node has anyway (its connections and subscriptions); a collector reads
them when Prometheus scrapes. Only the store latencies (a lock-free histogram observation per
store call) and HTTP requests (a counter per request) are counted as they happen.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from roomcast.core.node import Node

from .api import Api, Call, Returns
from .sse import EventStreams

api = Api()

# The classic text format, which every Prometheus version reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The metrics of one app. It is the :class:`~roomcast.backends.measured.StoreObserver`
    of the app's store."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events_sequenced = 0
        self.http_requests = Counter(
            "roomcast_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.store_append = _Latencies(
            "roomcast_store_append_seconds",
            "Store append latency as the node sees it (queueing and group commit included).",
        )
        self.store_read = _Latencies(
            "roomcast_store_read_seconds",
            "Store read latency (snapshots, replay pages, history, messages, listings).",
        )
        self.registry.register(self.store_append)
        self.registry.register(self.store_read)

    def watch(self, node: Node, streams: EventStreams) -> None:
        """Read the gauges and the fan-out counters from ``node`` at each scrape."""
        self.registry.register(_NodeCollector(self, node, streams))

    # ------------------------------------------------------------------ StoreObserver

    def appended(self, op: str, seconds: float, events: int) -> None:
        self.events_sequenced += events
        self.store_append.observe(op, seconds)

    def read(self, op: str, seconds: float) -> None:
        self.store_read.observe(op, seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Latencies(Collector):
    """A histogram by ``op``, observed on the event loop only (every store call reports
    there), so it needs no lock: an observation is one bisect and two additions, which
    matters at tens of thousands of appends a second."""

    def __init__(self, name: str, documentation: str) -> None:
        self._name = name
        self._documentation = documentation
        self._ops: dict[str, tuple[list[int], list[float]]] = {}  # op → (bucket counts, [sum])

    def observe(self, op: str, seconds: float) -> None:
        entry = self._ops.get(op)
        if entry is None:
            entry = self._ops[op] = ([0] * (len(LATENCY_BUCKETS) + 1), [0.0])
        entry[0][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        entry[1][0] += seconds

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=["op"])
        for op, (counts, total) in sorted(self._ops.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            family.add_metric([op], buckets, total[0])
        yield family


class _NodeCollector(Collector):
    def __init__(self, metrics: Metrics, node: Node, streams: EventStreams) -> None:
        self._metrics = metrics
        self._node = node
        self._streams = streams

    def collect(self) -> Iterable[Metric]:
        node = self._node
        connections = GaugeMetricFamily(
            "roomcast_connections",
            "Open client connections on this node, by transport.",
            labels=["transport"],
        )
        connections.add_metric(["websocket"], len(node.connections))
        connections.add_metric(["sse"], len(self._streams))
        yield connections
        yield GaugeMetricFamily(
            "roomcast_channels",
            "Channels with at least one subscriber on this node.",
            value=node.subscribed_channels,
        )
        yield CounterMetricFamily(
            "roomcast_events",
            "Events sequenced (stored with a serial) through this node.",
            value=self._metrics.events_sequenced,
        )
        yield CounterMetricFamily(
            "roomcast_deliveries",
            "Event frames handed to subscribers (connections and SSE streams).",
            value=node.stats.deliveries,
        )
        yield CounterMetricFamily(
            "roomcast_slow_consumers_dropped",
            "Subscribers dropped because their backlog passed outbound_queue.",
            value=node.stats.slow_consumers,
        )
        attaches = CounterMetricFamily(
            "roomcast_attach_snapshots",
            "Attach snapshots read from the store, and attaches that shared one already read.",
            labels=["source"],
        )
        shared = node.fanout.snapshots.stats
        attaches.add_metric(["store"], shared.reads)
        attaches.add_metric(["shared"], shared.shared)
        yield attaches


class RequestMetrics:
    """ASGI middleware counting HTTP requests by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.requests = metrics.http_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = getattr(scope.get("route"), "path", "unmatched")
                self.requests.labels(scope["method"], route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


@api.operation(
    "GET",
    "/metrics",
    summary="Prometheus metrics of this node",
    description=(
        "Gauges: `roomcast_connections{transport}`, `roomcast_channels`. Counters: "
        "`roomcast_events_total`, `roomcast_deliveries_total`, "
        "`roomcast_slow_consumers_dropped_total`, `roomcast_attach_snapshots_total{source}`, "
        "`roomcast_http_requests_total`. "
        "Histograms: `roomcast_store_append_seconds{op}`, `roomcast_store_read_seconds{op}`."
    ),
    tag="operations",
    authenticated=False,
    returns=(
        Returns(
            "200",
            "The Prometheus text exposition format (version 0.0.4).",
            media_type="text/plain",
            schema={"type": "string"},
        ),
    ),
)
async def metrics(call: Call) -> Response:
    registry: Metrics = call.request.app.state.metrics
    return Response(registry.exposition(), media_type=CONTENT_TYPE)


__all__ = ["Metrics", "RequestMetrics", "api"]
