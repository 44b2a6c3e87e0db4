"""How the server's stores call Redis: bounded, never retried behind their back, and every
failure turned into one `BrokerError` in one place.

No hidden retries: a publish retried by the client could be applied twice, and the broker's
reader owns reconnects so that it knows when to repair gaps. Every command and connection
attempt is bounded by the liveness timeout, so a silent Redis fails a call instead of hanging
the client connection that made it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis.asyncio as aioredis
from archmesh_client.cluster_client import cluster_client
from archmesh_client.redis_url import ClusterAddress
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

from shared.broker.base import BrokerError
from shared.broker.link import Liveness

# What a Redis call raises when the server, the network or the cluster's routing fails.
NETWORK_ERRORS = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)


def client_options(liveness: Liveness) -> dict[str, Any]:
    """redis-py client options: no retries, every command and connect within the timeout."""
    return {
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": liveness.timeout,
        "socket_timeout": liveness.timeout,
    }


# Command connections per node and Redis server. redis-py's default pool fails a call at once
# with "Too many connections" past 100 in flight; a reconnect storm (thousands of clients each
# checking revocations and reading their own channel's position at connect) has more.
POOL_SIZE = 100


def redis_client(url: str, liveness: Liveness, *, cluster: bool) -> Any:
    """A command client bounded like the broker's: no hidden retries, every command and
    connection attempt limited to `liveness.timeout`, so a silent Redis fails a store's call
    (presence, revocations) instead of hanging the connection that made it. On one server,
    a call that finds all POOL_SIZE connections busy waits for one (up to the same timeout)
    instead of failing: bursts queue, they do not fail."""
    options = client_options(liveness)
    if not cluster:
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=POOL_SIZE, timeout=liveness.timeout, **options
        )
        return aioredis.Redis.from_pool(pool)
    return cluster_client(ClusterAddress.parse(url), **options)


@contextmanager
def as_broker_error(what: str) -> Iterator[None]:
    """Run a Redis call; a failure becomes `BrokerError("<what> failed: <why>")`."""
    try:
        yield
    except NETWORK_ERRORS as exc:
        raise BrokerError(f"{what} failed: {exc}") from exc
