"""A LocalCluster driven from asyncio: its blocking levers run in a thread, so the clients
and the publisher of a scenario keep running on the event loop meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from deploy.local_cluster import LocalCluster

# Short drains and fast Redis liveness checks keep scenarios brief; the logic is the same.
# History covers the longest gap a scenario makes (200 events/s for 10 s on one channel);
# publishers trim it, so theirs must say the same (chaos.load.SteadyPublisher).
HISTORY_SIZE = 10_000
SCENARIO_ENV = {
    "ARCHMESH_HISTORY_SIZE": str(HISTORY_SIZE),
    "ARCHMESH_DRAIN_SECONDS": "1",
    "ARCHMESH_REDIS_PING_INTERVAL": "0.5",
    "ARCHMESH_REDIS_PING_TIMEOUT": "1.5",
}


@asynccontextmanager
async def running(cluster: LocalCluster) -> AsyncIterator[LocalCluster]:
    await asyncio.to_thread(cluster.start)
    try:
        yield cluster
    finally:
        await asyncio.to_thread(cluster.stop)


async def lever(function: Callable[..., Any], *args: Any) -> Any:
    """Run one of the cluster's blocking operations (kill, restart, ...) off the loop."""
    return await asyncio.to_thread(function, *args)
