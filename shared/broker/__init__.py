"""The broker: a backend chosen by URL scheme (`memory://`, `redis://`, `rediss://`, `unix://`,
`redis+cluster://`, `rediss+cluster://`)."""

from __future__ import annotations

from typing import Literal

from archmesh_client.retention import HistoryPolicy, Retention
from archmesh_client.stream import StreamPosition

from shared.broker.base import Broker, BrokerError, BrokerPublication, History
from shared.broker.link import Liveness

Backend = Literal["memory", "redis", "cluster"]

__all__ = [
    "Backend",
    "Broker",
    "BrokerError",
    "BrokerPublication",
    "History",
    "HistoryPolicy",
    "Liveness",
    "Retention",
    "StreamPosition",
    "backend_of",
    "create_broker",
]


SCHEMES = ("memory", "redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def backend_of(url: str) -> Backend:
    """Which backend a URL names: the one decision behind every store a node opens on it
    (the broker here, presence in `shared.presence`). Fails loudly on an unknown scheme."""
    scheme = url.partition("://")[0] if "://" in url else ""
    if not url or scheme == "memory":
        return "memory"
    if scheme in ("redis", "rediss", "unix"):
        return "redis"
    if scheme in ("redis+cluster", "rediss+cluster"):
        return "cluster"
    known = ", ".join(f"{name}://" for name in SCHEMES)
    raise ValueError(f"unknown broker URL scheme {scheme!r}: use one of {known}")


def create_broker(
    url: str, policy: HistoryPolicy | None = None, liveness: Liveness | None = None
) -> Broker:
    """An empty URL means the embedded in-memory broker. `liveness` says how fast a Redis
    broker notices a silent link (ignored by the memory broker)."""
    backend = backend_of(url)
    if backend == "memory":
        from shared.broker.memory import MemoryBroker

        return MemoryBroker(policy)
    if backend == "redis":
        from shared.broker.redis import RedisBroker

        return RedisBroker(url, policy, liveness)
    from shared.broker.cluster import RedisClusterBroker

    return RedisClusterBroker(url, policy, liveness)
