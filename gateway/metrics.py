"""Prometheus metrics of one gateway node (its own registry, so apps never collide).

Counters on the fan-out path are plain integers in `FanoutStats`, read at scrape time: a
prometheus `Counter.inc` takes a lock, which per message (or per socket) costs more than the
rest of the fan-out."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric

from gateway.handshake_gate import HandshakeGate
from shared.broker.reads import ReadCounts

# From well under a millisecond (a few sockets) to seconds (a node that is falling behind).
FANOUT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class FanoutStats:
    """Counted by the hub and connections, exported by `_StatsCollector`."""

    __slots__ = ("bytes_out", "deliveries", "frames_in", "publications")

    def __init__(self) -> None:
        self.publications = 0  # publications received from the broker with a local subscriber
        self.deliveries = 0  # publication frames queued to clients
        self.bytes_out = 0  # bytes of every frame queued to clients
        self.frames_in = 0  # frames received from clients


class _StatsCollector:
    _FAMILIES = (
        ("publications", "archmesh_publications_received", "Publications received from the broker"),
        ("deliveries", "archmesh_deliveries", "Publication frames queued to clients"),
        ("bytes_out", "archmesh_bytes_out", "Bytes of frames (with framing) queued to clients"),
        ("frames_in", "archmesh_client_frames_received", "Frames received from clients"),
    )

    def __init__(self, stats: FanoutStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        for attr, name, documentation in self._FAMILIES:
            yield CounterMetricFamily(name, documentation, value=getattr(self._stats, attr))

    def describe(self) -> Iterator[Metric]:
        return self.collect()


class _ReadsCollector:
    """The broker's history reads: those sent to the store, and those merged into an identical
    read of the same event-loop turn (shared/broker/reads.py)."""

    def __init__(self, counts: ReadCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "archmesh_history_reads",
            "History reads by outcome: issued (sent to the store), merged (answered by an "
            "identical read of the same event-loop turn)",
            labels=["outcome"],
        )
        issued = self._counts.issued
        family.add_metric(["issued"], issued)
        family.add_metric(["merged"], max(0, self._counts.asked - issued))
        yield family

    def describe(self) -> Iterator[Metric]:
        return self.collect()


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.stats = FanoutStats()
        r.register(_StatsCollector(self.stats))
        self.connections = Gauge("archmesh_connections", "Open client connections", registry=r)
        self.transport_connections = Gauge(
            "archmesh_transport_connections",
            "Open client connections by transport (websocket, sse)",
            ["transport"],
            registry=r,
        )
        self.channels = Gauge("archmesh_channels", "Channels with local subscribers", registry=r)
        self.subscriptions = Gauge(
            "archmesh_subscriptions", "Client subscriptions (connection, channel)", registry=r
        )
        self.fanout_seconds = Histogram(
            "archmesh_fanout_seconds",
            "From a publication's arrival from the broker until its frames are written to the "
            "sockets (one sample per batch written in one event-loop turn)",
            buckets=FANOUT_BUCKETS,
            registry=r,
        )
        self.disconnects = Counter(
            "archmesh_disconnects", "Client disconnects by close code", ["code"], registry=r
        )
        self.errors = Counter(
            "archmesh_client_errors", "Error frames by code", ["code"], registry=r
        )
        self.recoveries = Counter(
            "archmesh_recoveries",
            "Subscribes with `since`, by outcome (recovered, epoch_changed, history_trimmed, "
            "unknown_position)",
            ["outcome"],
            registry=r,
        )
        self.gap_repairs = Counter(
            "archmesh_gap_repairs",
            "Gaps in a channel's live stream the node repaired from history, by outcome "
            "(repaired, history_lost)",
            ["outcome"],
            registry=r,
        )
        self.published = Counter(
            "archmesh_api_published", "Publications accepted by the HTTP API", registry=r
        )
        self.broker_state = Gauge(
            "archmesh_broker_connected", "1 while live delivery from the broker works", registry=r
        )
        self.ready = Gauge(
            "archmesh_ready",
            "1 while the node should get traffic (what /readyz answers 200 for): live delivery "
            "works, the control stream is followed and the node is not draining",
            registry=r,
        )
        self.handshake_limit = Gauge(
            "archmesh_handshake_limit",
            "Connects and recovering subscribes admitted at once now: "
            "ARCHMESH_HANDSHAKE_CONCURRENCY, less while the event loop runs late",
            registry=r,
        )
        self.handshakes_waiting = Gauge(
            "archmesh_handshakes_waiting",
            "Connects and recovering subscribes waiting for their turn",
            registry=r,
        )
        self.loop_lag = Gauge(
            "archmesh_event_loop_lag_seconds",
            "How late the handshake gate's timer last fired (0 when no handshake is under way)",
            registry=r,
        )
        self.broker_reconnects = Counter(
            "archmesh_broker_reconnects",
            "Times live delivery (re)started, the first start included",
            registry=r,
        )
        self.connections_refused = Counter(
            "archmesh_connections_refused",
            "Handshakes refused with 503 node_full: the node held all the client sockets its "
            "open-files limit leaves room for (ARCHMESH_FD_RESERVE kept for the rest)",
            registry=r,
        )
        self.open_files_exhausted = Counter(
            "archmesh_open_files_exhausted",
            "Times the descriptors open were found at the open-files limit (the kernel then "
            "refuses new sockets before the node sees them)",
            registry=r,
        )
        self.open_files_limit = Gauge(
            "archmesh_open_files_limit", "The process's open-files limit", registry=r
        )
        self.open_files = Gauge(
            "archmesh_open_files", "Descriptors open (sampled every few seconds)", registry=r
        )

    def count_reads(self, counts: ReadCounts) -> None:
        """Export the broker's history read counts (issued, merged) from now on."""
        self.registry.register(_ReadsCollector(counts))

    def watch_handshakes(self, gate: HandshakeGate) -> None:
        self.handshake_limit.set_function(lambda: gate.limit)
        self.handshakes_waiting.set_function(lambda: gate.waiting)
        self.loop_lag.set_function(lambda: gate.lag)
