"""redis-py's Redis Cluster client, with one of its races reported as what it is. Every Cluster
client of ArchMesh's code is made here: a backend's publisher and notifier client, the
gateway's broker and stores, the notifier's stores.

While a slot migrates or the cluster's layout changes, redis-py's asyncio Cluster client can
close a connection that a command is about to write on (redis/redis-py#4287; the fix proposed
in #4217 is not in a release as of 8.1). The write then fails inside asyncio's stream with an
`AttributeError` ("'NoneType' object has no attribute 'writelines'") or a `TypeError`, which no
retry and no error handler recognises: a notifier API call during a migration answered 500
where the client should have been told to retry (tests/test_notifier_cluster_chaos.py caught
it). `SafeWrites` drops the connection and raises `ConnectionError` instead, as for any
connection found closed: the Cluster client's own retries (where it has them) take a fresh
connection, and callers treat it as Redis being out for a moment (a publish raises
`PublishError`, a server's API answers 503). The check is narrow: an `AttributeError` or
`TypeError` from a write on a connection whose writer is still open is a bug and is raised as
it was."""

from __future__ import annotations

from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from archmesh_client.redis_url import ClusterAddress


class SafeWrites(Connection):
    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except (AttributeError, TypeError) as exc:
            writer = getattr(self, "_writer", None)
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
    # (Private to redis-py: where they are not as expected, the client is left as it is.)
    made = getattr(cluster, "connection_kwargs", None)
    if isinstance(made, dict) and made.get("connection_class") is Connection:
        made["connection_class"] = SafeWrites
        for node in cluster.nodes_manager.startup_nodes.values():
            if node.connection_class is Connection and not getattr(node, "_connections", None):
                node.connection_class = SafeWrites
    return cluster
