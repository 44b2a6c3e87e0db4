"""The backend publisher of the client package (archmesh_client.publisher) against real Redis
and a real Redis Cluster, with the gateways' broker on the other end: what a backend
publishes lands in history and reaches subscribers exactly as the gateway's own publishes."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from archmesh_client.events import WorkflowStatus, WorkflowUpdate
from archmesh_client.publisher import InvalidPublication, connect_publisher, encode_event
from archmesh_client.redis_transport import PublishError
from archmesh_client.retention import HistoryPolicy, Retention

from deploy.ports import free_port
from shared.broker import Broker, BrokerPublication, create_broker
from tests.servers import RedisCluster, RedisServer

POLICY = HistoryPolicy.parse(Retention(size=50, ttl=60), "session:short-=2/60")
# Spread over the cluster's slots, so that every master carries some.
CHANNELS = [f"session:pub-{n}" for n in range(8)]


@pytest.fixture(params=["redis", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    return cluster.url


@pytest.fixture
async def subscriber(
    redis_url: str,
) -> AsyncIterator[tuple[Broker, asyncio.Queue[BrokerPublication]]]:
    """A gateway's broker on the same Redis, subscribed to CHANNELS."""
    broker = create_broker(redis_url, POLICY)
    received: asyncio.Queue[BrokerPublication] = asyncio.Queue()
    await broker.start(received.put_nowait)
    async with asyncio.timeout(10):
        while not broker.connected:
            await asyncio.sleep(0.01)
    for channel in CHANNELS:
        await broker.subscribe(channel)
    yield broker, received
    await broker.close()


async def test_publications_reach_the_gateways_broker_live_and_in_history(
    redis_url: str, subscriber: tuple[Broker, asyncio.Queue[BrokerPublication]]
) -> None:
    broker, received = subscriber
    async with connect_publisher(redis_url, POLICY) as publisher:
        sent = []
        for n, channel in enumerate(CHANNELS):
            sent.append(await publisher.publish(channel, {"type": "t", "n": n}))
        update = WorkflowUpdate(session_id="pub-0", stage="design", progress=0.5)
        sent.append(await publisher.publish(CHANNELS[0], update))
    got = [await asyncio.wait_for(received.get(), 10) for _ in sent]
    by_channel = {p.channel: p for p in got[: len(CHANNELS)]}
    for n, channel in enumerate(CHANNELS):
        assert (by_channel[channel].offset, by_channel[channel].epoch) == (
            sent[n].offset,
            sent[n].epoch,
        )
        assert orjson.loads(by_channel[channel].data) == {"type": "t", "n": n}
    last = got[-1]
    assert (last.channel, last.offset) == (CHANNELS[0], 2)
    assert WorkflowUpdate.model_validate_json(last.data) == update
    history = await broker.history(CHANNELS[0], 0, 10)
    assert history.complete
    assert [p.offset for p in history.publications] == [1, 2]
    assert history.position == sent[-1]


async def test_the_history_policy_sets_each_channels_retention(redis_url: str) -> None:
    async with connect_publisher(redis_url, POLICY) as publisher:
        for n in range(5):
            await publisher.publish("session:short-a", {"type": "t", "n": n})
            await publisher.publish("session:long-a", {"type": "t", "n": n})
    broker = create_broker(redis_url, POLICY)
    try:
        short = await broker.history("session:short-a", 0, 10)
        long = await broker.history("session:long-a", 0, 10)
    finally:
        await broker.close()
    assert [p.offset for p in short.publications] == [4, 5]  # size 2 for `session:short-`
    assert not short.complete
    assert [p.offset for p in long.publications] == [1, 2, 3, 4, 5]


async def test_invalid_publications_are_refused_before_redis(redis_server: RedisServer) -> None:
    async with connect_publisher(redis_server.url, max_bytes=100) as publisher:
        with pytest.raises(InvalidPublication) as exc:
            await publisher.publish("room:1", {"type": "t"})
        assert exc.value.code == "invalid_channel"
        for data in ({"no": "type"}, {"type": ""}, [1], {"type": "t", "x": object()}):
            with pytest.raises(InvalidPublication) as exc:
                await publisher.publish("session:x", data)  # type: ignore[arg-type]
            assert exc.value.code == "bad_data"
        with pytest.raises(InvalidPublication) as exc:
            await publisher.publish("session:x", {"type": "t", "pad": "x" * 100})
        assert exc.value.code == "too_large"
    assert redis_server.client().keys("rt:*") == []


def test_events_are_compact_json_with_nan_as_null() -> None:
    text = encode_event({"type": "t", "x": math.nan, "s": "é", "l": [1, None]}, 1000)
    assert text == '{"type":"t","x":null,"s":"é","l":[1,null]}'
    update = WorkflowUpdate(session_id="s", stage="x", progress=1, status=WorkflowStatus.COMPLETED)
    assert orjson.loads(encode_event(update, 1000))["status"] == "completed"


async def test_an_unreachable_redis_fails_the_publish_promptly() -> None:
    started = time.monotonic()
    async with connect_publisher(f"redis://127.0.0.1:{free_port()}/0") as publisher:
        with pytest.raises(PublishError, match="publish failed"):
            await publisher.publish("session:x", {"type": "t"})
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("url", ["", "memory://", "kafka://localhost"])
async def test_a_backend_publishes_through_redis_only(url: str) -> None:
    with pytest.raises(ValueError, match="publishes through Redis"):
        async with connect_publisher(url):
            pass
