"""redis-py's Redis Cluster client, with one of its races reported as what it is.

While a slot migrates or the cluster's layout changes, redis-py's asyncio Cluster client can
close a connection that a command is about to write on (redis/redis-py#4287; the fix proposed
in #4217 is not in a release as of 8.1). The write then fails inside asyncio's stream with an
`AttributeError` ("'NoneType' object has no attribute 'writelines'") or a `TypeError`, which no
retry and no error handler recognises: a notifier API call during a migration answered 500
where the client should have been told to retry (tests/test_notifier_cluster_chaos.py caught
it). `SafeWrites` drops the connection and raises `ConnectionError` instead, as for any
connection found closed: the Cluster client's own retries (where it has them) take a fresh
connection, and the stores and API handlers treat it as the store being out for a moment (503).
The check is narrow: an `AttributeError` or `TypeError` from a write on a connection whose
writer is still open is a bug and is raised as it was."""

from __future__ import annotations

from typing import Any

from archmesh_client.redis_url import ClusterAddress
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError


class SafeWrites(Connection):
    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except (AttributeError, TypeError) as exc:
            writer = self._writer
            if writer is not None and not writer.transport.is_closing():
                raise  # not the race: a bug, raised as it was
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"connection closed during a write ({exc})") from exc


def cluster_client(address: ClusterAddress, **options: Any) -> RedisCluster:
    """A `RedisCluster` on `address` whose plain (not TLS) connections are `SafeWrites`."""
    startup = [ClusterNode(host, port) for host, port in address.nodes]
    cluster = RedisCluster(startup_nodes=startup, **address.credentials(), **options)
    # The nodes it makes take their connection class from these keyword arguments (shared by
    # its node manager); the startup nodes were made already and have not connected yet.
    made = cluster.connection_kwargs
    if made.get("connection_class") is Connection:
        made["connection_class"] = SafeWrites
        for node in cluster.nodes_manager.startup_nodes.values():
            if node.connection_class is Connection and not node._connections:
                node.connection_class = SafeWrites
    return cluster
