"""Redis Cluster broker: sharded pub/sub (SSUBSCRIBE/SPUBLISH, Redis >= 7), one watched link
per master, history keys hash-tagged per channel so they share its slot.

URL: `redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://` for TLS).
The hosts are only the first contact; the cluster tells where every slot lives.

Why not redis-py's `ClusterPubSub`: its `get_sharded_message()` polls the per-node connections
one after another, each for the full timeout, so a message on the last node waits for the
others' timeouts (or, with timeout 0, the reader spins); and after a reconnect or a slot move it
resubscribes by itself, in the background, without telling anyone that messages published
meanwhile were lost. Here every master gets a plain pub/sub link, and any failure or slot move
ends the whole session: the broker reports not-connected, reconnects with the cluster's current
map, and the hub repairs the gaps from history, exactly as on one Redis.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from archmesh_client.cluster_client import cluster_client
from archmesh_client.redis_url import ClusterAddress
from archmesh_client.retention import HistoryPolicy
from archmesh_client.stream import StreamPosition
from redis.asyncio.cluster import RedisCluster

from shared.broker.link import Liveness
from shared.broker.redis import RedisBroker


class RedisClusterBroker(RedisBroker):
    sharded = True
    # A cluster pipeline splits by slot and node anyway; each read stays a call of its own.
    batched_reads = False

    def __init__(
        self, url: str, policy: HistoryPolicy | None = None, liveness: Liveness | None = None
    ) -> None:
        self._address = ClusterAddress.parse(url)
        super().__init__(url, policy, liveness)

    def _command_client(self) -> RedisCluster:
        return cluster_client(self._address, **self._options())

    async def _link_clients(self) -> dict[str, aioredis.Redis]:
        cluster: RedisCluster = self._redis
        await cluster.initialize()
        await cluster.nodes_manager.initialize()  # the current map, not the one cached
        return {
            node.name: aioredis.Redis(
                host=node.host,
                port=int(node.port),
                **self._address.credentials(),
                **self._options(),
            )
            for node in cluster.get_primaries()
        }

    def _route(self, name: str) -> str:
        cluster: RedisCluster = self._redis
        node = cluster.get_node_from_key(name)
        return "" if node is None else str(node.name)  # "": no link, so a reconnect

    async def publish_many(self, items: list[tuple[str, str]]) -> list[StreamPosition]:
        # redis-py refuses scripts in a cluster pipeline: one round trip per item, in order.
        return [await self.publish(channel, data) for channel, data in items]

    async def _ping_commands(self) -> None:
        # Masters only: a lost replica must not take the node out of the balancer.
        await self._redis.ping(target_nodes=RedisCluster.PRIMARIES)

    async def _drop_command_connections(self) -> None:
        cluster: RedisCluster = self._redis
        for node in cluster.get_nodes():
            await node.disconnect()
