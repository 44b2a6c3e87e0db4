"""Prometheus metrics of one gateway node (its own registry, so apps never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("archmesh_connections", "Open client connections", registry=r)
        self.channels = Gauge("archmesh_channels", "Channels with local subscribers", registry=r)
        self.publications = Counter(
            "archmesh_publications_received", "Publications received from the broker", registry=r
        )
        self.deliveries = Counter(
            "archmesh_deliveries", "Publication frames queued to clients", registry=r
        )
        self.disconnects = Counter(
            "archmesh_disconnects", "Client disconnects by close code", ["code"], registry=r
        )
        self.errors = Counter(
            "archmesh_client_errors", "Error frames by code", ["code"], registry=r
        )
        self.published = Counter(
            "archmesh_api_published", "Publications accepted by the HTTP API", registry=r
        )
        self.broker_state = Gauge(
            "archmesh_broker_connected", "1 while live delivery from the broker works", registry=r
        )
        self.broker_reconnects = Counter(
            "archmesh_broker_reconnects",
            "Times live delivery (re)started, the first start included",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
