"""The broker: a backend chosen by URL scheme (`memory://`, `redis://`, `rediss://`, `unix://`,
`redis+cluster://`, `rediss+cluster://`)."""

from __future__ import annotations

from archmesh_client.retention import HistoryPolicy, Retention
from archmesh_client.stream import StreamPosition

from shared.broker.base import Broker, BrokerError, History, PresenceEntry, Publication
from shared.broker.link import Liveness

__all__ = [
    "Broker",
    "BrokerError",
    "History",
    "HistoryPolicy",
    "Liveness",
    "PresenceEntry",
    "Publication",
    "Retention",
    "StreamPosition",
    "create_broker",
]


SCHEMES = ("memory", "redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def create_broker(
    url: str, policy: HistoryPolicy | None = None, liveness: Liveness | None = None
) -> Broker:
    """An empty URL means the embedded in-memory broker. `liveness` says how fast a Redis
    broker notices a silent link (ignored by the memory broker)."""
    scheme = url.partition("://")[0] if "://" in url else ""
    if not url or scheme == "memory":
        from shared.broker.memory import MemoryBroker

        return MemoryBroker(policy)
    if scheme in ("redis", "rediss", "unix"):
        from shared.broker.redis import RedisBroker

        return RedisBroker(url, policy, liveness)
    if scheme in ("redis+cluster", "rediss+cluster"):
        from shared.broker.cluster import RedisClusterBroker

        return RedisClusterBroker(url, policy, liveness)
    known = ", ".join(f"{name}://" for name in SCHEMES)
    raise ValueError(f"unknown broker URL scheme {scheme!r}: use one of {known}")
