"""archmesh_client/cluster_client.py (every Cluster client of the servers and the backends): a
write on a connection closed under it (redis-py's race while a Cluster's layout changes) is a
`ConnectionError`, not asyncio's internals leaking out; and every node's connections of a
`cluster_client` are such connections."""

from __future__ import annotations

import asyncio

from archmesh_client.cluster_client import SafeWrites, cluster_client
from archmesh_client.redis_url import ClusterAddress
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.servers import RedisCluster, RedisServer


async def closed_during_write(kind: type[Connection], server: RedisServer) -> BaseException:
    """Start a write, close the connection before the write runs (what redis-py's Cluster
    client does to a connection when the layout changes), and return what the write raised."""
    host, _, port = server.url.removeprefix("redis://").partition("/")[0].partition(":")
    conn = kind(host=host, port=int(port), socket_timeout=5)
    await conn.connect()
    # With a socket timeout the write runs in a task of its own: it is scheduled, not run, when
    # the sender first yields, and the close comes in between.
    sending = asyncio.ensure_future(conn.send_packed_command(conn.pack_command("PING"), False))
    await asyncio.sleep(0)
    await conn.disconnect(nowait=True)
    try:
        await sending
    except (AttributeError, TypeError, RedisConnectionError) as exc:
        return exc
    raise AssertionError("a write on a closed connection went through")


async def test_a_write_on_a_connection_closed_under_it_is_a_connection_error(
    redis_server: RedisServer,
) -> None:
    # redis-py's own connection lets asyncio's error out (redis/redis-py#4287)...
    assert isinstance(await closed_during_write(Connection, redis_server), AttributeError)
    # ... ours says what happened, in the exception every caller handles.
    error = await closed_during_write(SafeWrites, redis_server)
    assert isinstance(error, RedisConnectionError)
    assert "closed during a write" in str(error)


async def test_every_node_of_a_cluster_client_writes_safely(redis_cluster: RedisCluster) -> None:
    client = cluster_client(ClusterAddress.parse(redis_cluster.url), socket_timeout=5)
    try:
        for n in range(30):  # keys on every master
            await client.set(f"safe:{n}", n)
        nodes = client.get_nodes()
        assert len(nodes) == 3
        for node in nodes:
            assert node.connection_class is SafeWrites
            assert node._connections
            assert all(type(conn) is SafeWrites for conn in node._connections)
    finally:
        await client.aclose()
