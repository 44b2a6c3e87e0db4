"""Presence: who is in a channel across every node, in a store of its own, chosen from the same
URL as the broker (see `shared.broker.backend_of`)."""

from __future__ import annotations

from shared.broker import Liveness, backend_of
from shared.presence.base import PresenceEntry, PresenceStats, PresenceStore

__all__ = ["PresenceEntry", "PresenceStats", "PresenceStore", "create_presence"]


def create_presence(url: str, liveness: Liveness | None = None) -> PresenceStore:
    """An empty URL means the embedded in-memory store; an unknown scheme fails loudly."""
    backend = backend_of(url)
    if backend == "memory":
        from shared.presence.memory import MemoryPresence

        return MemoryPresence()
    from shared.presence.redis import RedisPresence
    from shared.redis_calls import redis_client

    return RedisPresence(redis_client(url, liveness or Liveness(), cluster=backend == "cluster"))
