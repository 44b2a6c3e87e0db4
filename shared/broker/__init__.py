"""The broker: a backend chosen by URL scheme (`memory://`, `redis://`, `rediss://`, `unix://`)."""

from __future__ import annotations

from shared.broker.base import (
    Broker,
    BrokerError,
    History,
    PresenceEntry,
    Publication,
    StreamPosition,
)
from shared.broker.policy import HistoryPolicy, Retention

__all__ = [
    "Broker",
    "BrokerError",
    "History",
    "HistoryPolicy",
    "PresenceEntry",
    "Publication",
    "Retention",
    "StreamPosition",
    "create_broker",
]


def create_broker(url: str, policy: HistoryPolicy | None = None) -> Broker:
    """An empty URL means the embedded in-memory broker."""
    scheme = url.partition("://")[0] if "://" in url else ""
    if not url or scheme == "memory":
        from shared.broker.memory import MemoryBroker

        return MemoryBroker(policy)
    if scheme in ("redis", "rediss", "unix"):
        from shared.broker.redis import RedisBroker

        return RedisBroker(url, policy)
    raise ValueError(f"unknown broker URL scheme {scheme!r}: use memory://, redis://, rediss://")
