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

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from shared.broker.base import StreamPosition
from shared.broker.link import Liveness
from shared.broker.policy import HistoryPolicy
from shared.broker.redis import RedisBroker

SCHEMES = ("redis+cluster", "rediss+cluster")


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> ClusterAddress:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in SCHEMES:
            raise ValueError(f"a Redis Cluster URL starts with {' or '.join(SCHEMES)}://")
        userinfo, _, hosts = rest.rpartition("@")
        hosts, _, path = hosts.partition("/")
        if path not in ("", "0") or "?" in hosts:
            raise ValueError("a Redis Cluster URL has no database (only 0) and no options")
        nodes = tuple(_host_port(item) for item in hosts.split(","))
        user, _, password = userinfo.partition(":")
        return cls(
            nodes,
            username=unquote(user) or None,
            password=unquote(password) or None,
            tls=scheme == "rediss+cluster",
        )

    def credentials(self) -> dict[str, Any]:
        return {"username": self.username, "password": self.password, "ssl": self.tls}


def _host_port(item: str) -> tuple[str, int]:
    host, sep, port = item.strip().rpartition(":")
    if not sep or not host or "]" in port:
        host, port = item.strip(), "6379"
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"Redis Cluster node {item!r}: expected host:port")
    return host, int(port)


class RedisClusterBroker(RedisBroker):
    sharded = True

    def __init__(
        self, url: str, policy: HistoryPolicy | None = None, liveness: Liveness | None = None
    ) -> None:
        self._address = ClusterAddress.parse(url)
        super().__init__(url, policy, liveness)

    def _command_client(self) -> RedisCluster:
        startup = [ClusterNode(host, port) for host, port in self._address.nodes]
        return RedisCluster(startup_nodes=startup, **self._address.credentials(), **self._options())

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
