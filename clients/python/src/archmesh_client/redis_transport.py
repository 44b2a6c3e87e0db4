"""A backend's connection for publishing: one Redis server or a Redis Cluster, the publish
script over it, and nothing of the gateway's broker (no pub/sub links, no reconnect loop)."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

from archmesh_client import history_script, publish_script
from archmesh_client.cluster_client import cluster_client
from archmesh_client.idempotency import Idempotency
from archmesh_client.redis_url import ClusterAddress, is_cluster_url
from archmesh_client.retention import HistoryPolicy
from archmesh_client.stream import StreamPosition

# Bounds every command and connection attempt, so a silent Redis fails a publish instead of
# hanging it (the gateways' default ARCHMESH_REDIS_PING_TIMEOUT).
TIMEOUT = 3.0

NETWORK_ERRORS = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)


class PublishError(RuntimeError):
    """Redis could not be reached, or refused the publish. It may or may not have happened."""


class HistoryError(RuntimeError):
    """Redis could not be reached, or refused the history read."""


def redis_client(url: str) -> Any:
    """A backend's Redis (or Redis Cluster) client: bounded, never retrying behind its back."""
    # No hidden retries: a publish retried by the client could be applied twice.
    options: dict[str, Any] = {
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": TIMEOUT,
        "socket_timeout": TIMEOUT,
    }
    if is_cluster_url(url):
        return cluster_client(ClusterAddress.parse(url), **options)
    if url.partition("://")[0] not in ("redis", "rediss", "unix"):
        raise ValueError(
            "a backend publishes through Redis: use a redis://, rediss://, unix://, "
            "redis+cluster:// or rediss+cluster:// URL"
        )
    return aioredis.Redis.from_url(url, **options)


class RedisTransport:
    """Publishes with the gateways' script and key layout; on a cluster URL with SPUBLISH, the
    sharded pub/sub the gateways subscribe to there."""

    def __init__(self, url: str, policy: HistoryPolicy | None = None) -> None:
        self._policy = policy or HistoryPolicy()
        self._sharded = is_cluster_url(url)
        self._redis = redis_client(url)
        self._script = self._redis.register_script(publish_script.SOURCE)
        self._history = self._redis.register_script(history_script.SOURCE)

    async def publish(
        self, channel: str, data: str, idempotency: Idempotency | None = None
    ) -> StreamPosition:
        retention = self._policy.for_channel(channel)
        keys, args = publish_script.keys_and_args(
            channel, data, retention, sharded=self._sharded, idempotency=idempotency
        )
        try:
            reply = await self._script(keys=keys, args=args)
        except NETWORK_ERRORS as exc:
            conflict = publish_script.conflict(exc)
            if conflict is not None:
                raise conflict from None
            raise PublishError(f"publish failed: {exc}") from exc
        return publish_script.position(reply)

    async def read_history(
        self, channel: str, since: int, limit: int
    ) -> tuple[list[tuple[int, str]], StreamPosition]:
        """Publications after `since` (at most `limit`, oldest first) and the position, read
        with the gateways' script: a `history_page.Read`."""
        ttl = self._policy.for_channel(channel).ttl
        keys, args = history_script.keys_and_args(channel, since, limit, ttl)
        try:
            reply = history_script.parse(await self._history(keys=keys, args=args))
        except NETWORK_ERRORS as exc:
            raise HistoryError(f"history read failed: {exc}") from exc
        return reply.entries, reply.position

    async def close(self) -> None:
        await self._redis.aclose()
