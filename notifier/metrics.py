"""Prometheus metrics of one notifier process (its own registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Why each provider's webhook refuses a request (Twilio's signature carries no timestamp).
WEBHOOK_REFUSALS = {
    "email": ("signature", "stale", "replayed", "malformed"),
    "twilio": ("signature", "malformed"),
}


class NotifierMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "archmesh_notifier_requests_received", "Requests accepted by the HTTP API", registry=r
        )
        self.processed = Counter(
            "archmesh_notifier_requests_processed",
            "Stream entries processed, by outcome (accepted, duplicate, dead_letter, topic)",
            ["outcome"],
            registry=r,
        )
        self.deliveries = Counter(
            "archmesh_notifier_deliveries",
            "Medium deliveries reaching a state (sent, failed, held, suppressed, retrying)",
            ["channel", "status"],
            registry=r,
        )
        self.retries = Counter(
            "archmesh_notifier_retries",
            "Delivery attempts scheduled again",
            ["channel"],
            registry=r,
        )
        self.retries_exhausted = Counter(
            "archmesh_notifier_retries_exhausted",
            "Deliveries failed for good after the last attempt (ARCHMESH_NOTIFIER_MAX_ATTEMPTS)",
            ["channel"],
            registry=r,
        )
        self.dead_letters = Counter(
            "archmesh_notifier_dead_letters", "Requests moved to the dead-letter stream", registry=r
        )
        self.push_failures = Counter(
            "archmesh_notifier_live_push_failures",
            "In-app notifications stored but not pushed live (broker down)",
            registry=r,
        )
        self.processing_errors = Counter(
            "archmesh_notifier_processing_errors", "Batches that raised (retried)", registry=r
        )
        self.queue_lag = Gauge(
            "archmesh_notifier_queue_lag", "Requests in the stream not yet read", registry=r
        )
        self.queue_pending = Gauge(
            "archmesh_notifier_queue_pending", "Requests read but not yet finished", registry=r
        )
        self.partitions_held = Gauge(
            "archmesh_notifier_partitions_held",
            "Intake partitions this replica holds (every one, when not partitioned)",
            registry=r,
        )
        self.due = Gauge(
            "archmesh_notifier_deliveries_scheduled",
            "External deliveries waiting (due now, retrying or held)",
            registry=r,
        )
        self.webhooks_refused = Counter(
            "archmesh_notifier_webhooks_refused",
            "Providers' webhook requests refused, by provider (email, twilio) and reason "
            "(signature, stale, replayed, malformed)",
            ["provider", "reason"],
            registry=r,
        )
        for provider, reasons in WEBHOOK_REFUSALS.items():  # zero until one is refused
            for reason in reasons:
                self.webhooks_refused.labels(provider, reason)
        self.send_seconds = Histogram(
            "archmesh_notifier_send_seconds",
            "Time to hand one message to an external channel",
            ["channel"],
            registry=r,
        )
