"""The broker on a real 3-master Redis Cluster: sharded pub/sub spread over every master, one
channel's keys in one slot, slot moves and master restarts reported to the caller, and two
gateway processes delivering and recovering across the cluster."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
from archmesh_client.redis_url import ClusterAddress

from shared.broker import Broker, BrokerError, Liveness, create_broker
from shared.settings import Settings
from tests.servers import GatewayProcess, RedisCluster, wait_until
from tests.test_broker_contract import Recorder, _until, event
from tests.wsclient import connect, recv_type, subscribe

FAST = Liveness(interval=0.2, timeout=1.0)


def channels_per_master(cluster: RedisCluster, prefix: str = "session:") -> dict[int, str]:
    """One channel name per master port: a channel whose slot that master owns."""
    client = cluster.client()
    found: dict[int, str] = {}
    n = 0
    while len(found) < len(cluster.ports):
        channel = f"{prefix}{n}"
        node = client.get_node_from_key(f"rt:{{{channel}}}")
        found.setdefault(node.port, channel)
        n += 1
    client.close()
    return found


@pytest.fixture
async def broker(redis_cluster: RedisCluster) -> AsyncIterator[tuple[Broker, Recorder]]:
    instance = create_broker(redis_cluster.url, liveness=FAST)
    recorder = Recorder()
    await instance.start(recorder.on_message, recorder.on_state)
    await _until(lambda: instance.connected)
    yield instance, recorder
    await instance.close()


@pytest.fixture(scope="module")
def private_cluster() -> Iterator[RedisCluster]:
    """A cluster of this module's own, with AOF, whose masters tests may kill or reshard."""
    cluster = RedisCluster(3, appendonly=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


async def test_every_master_carries_its_channels_sharded(
    broker: tuple[Broker, Recorder], redis_cluster: RedisCluster
) -> None:
    b, rec = broker
    spread = channels_per_master(redis_cluster)
    for channel in spread.values():
        await b.subscribe(channel)
    for port, channel in spread.items():
        node = redis_cluster.node(redis_cluster.ports.index(port))
        name = f"rt:{{{channel}}}"
        await _until(lambda n=node, c=name: n.execute_command("PUBSUB", "SHARDNUMSUB", c)[1] == 1)
        assert node.pubsub_numsub(name) == [(name.encode(), 0)]  # sharded, not classic
    for channel in spread.values():
        await b.publish(channel, event(1))
    got = sorted([(await rec.next()).channel for _ in spread])
    assert got == sorted(spread.values())
    for port, channel in spread.items():
        node = redis_cluster.node(redis_cluster.ports.index(port))
        # The script's keys live with the channel: one slot, so one node holds them all.
        keys = {k.decode() for k in node.keys(f"rt:{{{channel}}}*")}
        assert keys == {f"rt:{{{channel}}}:meta", f"rt:{{{channel}}}:history"}


async def test_plain_spublish_reaches_subscribers_without_offset(
    broker: tuple[Broker, Recorder], redis_cluster: RedisCluster
) -> None:
    b, rec = broker
    await b.subscribe("broadcast")
    client = redis_cluster.client()
    node = client.get_node_from_key("rt:{broadcast}")
    direct = redis_cluster.node(redis_cluster.ports.index(node.port))
    await _until(lambda: direct.execute_command("PUBSUB", "SHARDNUMSUB", "rt:{broadcast}")[1] == 1)
    direct.execute_command("SPUBLISH", "rt:{broadcast}", b'{"type":"maintenance"}')
    got = await rec.next()
    assert (got.channel, got.offset, orjson.loads(got.data)) == (
        "broadcast",
        None,
        {"type": "maintenance"},
    )
    client.close()


async def test_slot_move_resubscribes_on_the_new_owner(private_cluster: RedisCluster) -> None:
    b = create_broker(private_cluster.url, liveness=FAST)
    rec = Recorder()
    await b.start(rec.on_message, rec.on_state)
    try:
        await b.subscribe("session:moving")
        await _until(lambda: b.connected)
        first = await b.publish("session:moving", event(1))
        assert (await rec.next()).offset == 1
        target = _move_slot(private_cluster, "rt:{session:moving}")
        await _until(lambda: rec.states == [True, False, True])  # told, so the hub repairs
        second = await b.publish("session:moving", event(2))
        assert (second.offset, second.epoch) == (2, first.epoch)  # history moved along
        got = await rec.next()
        assert (got.offset, got.epoch) == (2, first.epoch)
        shard = target.execute_command("PUBSUB", "SHARDNUMSUB", "rt:{session:moving}")
        assert shard[1] == 1
    finally:
        await b.close()


def _move_slot(cluster: RedisCluster, key: str):  # type: ignore[no-untyped-def]
    """Migrate `key`'s slot, keys included, to the next master; returns its client."""
    client = cluster.client()
    slot = client.keyslot(key)
    source = cluster.ports.index(client.get_node_from_key(key).port)
    client.close()
    target = (source + 1) % len(cluster.ports)
    src, dst = cluster.node(source), cluster.node(target)
    src_id, dst_id = src.execute_command("CLUSTER MYID"), dst.execute_command("CLUSTER MYID")
    dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
    keys = src.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)
    if keys:
        port = cluster.ports[target]
        src.execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *keys)
    for index in range(len(cluster.ports)):
        cluster.node(index).execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
    return dst


async def test_master_restart_is_reported_and_delivery_resumes(
    private_cluster: RedisCluster,
) -> None:
    spread = channels_per_master(private_cluster)
    victim_port, channel = next(iter(spread.items()))
    victim = private_cluster.ports.index(victim_port)
    b = create_broker(private_cluster.url, liveness=FAST)
    rec = Recorder()
    await b.start(rec.on_message, rec.on_state)
    try:
        for name in spread.values():
            await b.subscribe(name)
        await _until(lambda: b.connected)
        before = await b.publish(channel, event(1))
        await rec.next()

        private_cluster.stop(victim)
        await _until(lambda: rec.states == [True, False])
        with pytest.raises(BrokerError):
            await b.publish(channel, event(2))

        await asyncio.to_thread(private_cluster.start, victim)  # rejoins with its slots
        await _until(lambda: rec.states == [True, False, True], timeout=20)
        for name in spread.values():  # every master delivers again, the restarted one too
            position = await b.publish(name, event(3))
            got = await rec.next()
            assert (got.channel, got.offset) == (name, position.offset)
        after = await b.position(channel)
        assert (after.offset, after.epoch) == (2, before.epoch)  # AOF kept history: no gap
    finally:
        await b.close()


def test_cluster_url_parsing() -> None:
    parsed = ClusterAddress.parse("rediss+cluster://app:s%40cret@r1:7000,r2:7001,[::1]:7002")
    assert parsed == ClusterAddress(
        (("r1", 7000), ("r2", 7001), ("::1", 7002)), "app", "s@cret", tls=True
    )
    assert ClusterAddress.parse("redis+cluster://r1").nodes == (("r1", 6379),)
    for bad in (
        "redis+cluster://r1:7000/2",
        "redis+cluster://r1:notaport",
        "redis+cluster://r1:7000?x=1",
        "redis+cluster://",
        "redis://r1:7000",
    ):
        with pytest.raises(ValueError, match="Redis Cluster"):
            ClusterAddress.parse(bad)


def test_settings_accept_cluster_urls_and_refuse_bad_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "redis+cluster://10.0.0.1:7000,10.0.0.2:7000"
    assert Settings(redis_url=url).redis_url == url
    with pytest.raises(ValueError, match="host:port"):
        Settings(redis_url="redis+cluster://10.0.0.1:x")
    with pytest.raises(ValueError, match="redis\\+cluster://"):
        Settings(redis_url="cluster://10.0.0.1:7000")
    with pytest.raises(ValueError, match="PING_INTERVAL must be below"):
        Settings(redis_ping_interval=3, redis_ping_timeout=3)
    with pytest.raises(ValueError, match="unknown broker URL scheme 'valkey'"):
        create_broker("valkey://x:1")


@pytest.mark.slow
async def test_two_gateways_deliver_and_recover_across_the_cluster(
    redis_cluster: RedisCluster, gateways: list[GatewayProcess]
) -> None:
    a, b = GatewayProcess(redis_cluster.url), GatewayProcess(redis_cluster.url)
    gateways.extend([a, b])  # stopped by the fixture even if one fails to start
    a.start()
    b.start()
    wait_until(lambda: a.ready() and b.ready(), what="both nodes ready on the cluster")
    spread = list(channels_per_master(redis_cluster).values())
    sessions = [c.removeprefix("session:") for c in spread]
    ws = await connect(a.ws, "alice", sessions=sessions)
    seen: dict[str, dict[str, object]] = {}
    for channel in spread:
        assert (await subscribe(ws, channel))["type"] == "subscribed"
    for channel in spread:  # published through node b, delivered by node a, on every master
        reply = b.publish(channel, {"type": "t", "n": 1})
        assert reply.status_code == 200, reply.text
        pub = await recv_type(ws, "publication")
        assert (pub["channel"], pub["offset"]) == (channel, reply.json()["offset"])
        seen[channel] = pub
    await ws.close()

    for channel in spread:  # missed while away
        for n in (2, 3):
            assert b.publish(channel, {"type": "t", "n": n}).status_code == 200
    back = await connect(b.ws, "alice", sessions=sessions)
    for channel in spread:
        since = {"offset": seen[channel]["offset"], "epoch": seen[channel]["epoch"]}
        reply = await subscribe(back, channel, since=since)
        assert (reply["type"], reply["recovered"]) == ("subscribed", True), json.dumps(reply)
        missed = [await recv_type(back, "publication") for _ in (2, 3)]
        assert [(p["channel"], p["data"]["n"]) for p in missed] == [(channel, 2), (channel, 3)]
    await back.close()
    assert "redis_pubsub_connected" in a.log.read_text()


@pytest.mark.slow
async def test_gateway_survives_a_master_restart(
    private_cluster: RedisCluster, gateways: list[GatewayProcess]
) -> None:
    cluster = private_cluster
    node = GatewayProcess(cluster.url, ARCHMESH_REDIS_PING_INTERVAL="0.2")
    gateways.append(node)
    node.start()
    channel = channels_per_master(cluster, "session:gw-")[cluster.ports[0]]
    ws = await connect(node.ws, "alice", sessions=[channel.removeprefix("session:")])
    await subscribe(ws, channel)
    first = node.publish(channel, {"type": "t", "n": 1})
    assert first.status_code == 200
    assert (await recv_type(ws, "publication"))["data"]["n"] == 1

    cluster.stop(0, signal.SIGKILL)
    wait_until(lambda: not node.ready(), what="not ready while a master is down")
    await asyncio.to_thread(cluster.start, 0)  # AOF: history survives
    # Published straight to the cluster as soon as it is back, racing the node's resubscribe:
    # whether live or repaired from history, each arrives once and in order.
    publisher = create_broker(cluster.url)
    try:
        sent = [await publisher.publish(channel, event(n)) for n in (2, 3)]
    finally:
        await publisher.close()
    got = [await recv_type(ws, "publication", timeout=20) for _ in sent]
    start = first.json()["offset"]
    assert [p["offset"] for p in got] == [p.offset for p in sent] == [start + 1, start + 2]
    assert {p["epoch"] for p in got} == {first.json()["epoch"]}
    wait_until(node.ready, what="ready again")
    await ws.close()
