"""The backend publisher of the client package (archmesh_client.publisher) against real Redis
and a real Redis Cluster, with the gateways' broker on the other end: what a backend
publishes lands in history and reaches subscribers exactly as the gateway's own publishes."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest
import redis
from archmesh_client import publish_script
from archmesh_client.events import WorkflowStatus, WorkflowUpdate
from archmesh_client.idempotency import IdempotencyConflict
from archmesh_client.publisher import InvalidPublication, connect_publisher, encode_event
from archmesh_client.redis_transport import PublishError
from archmesh_client.redis_url import ClusterAddress, is_cluster_url
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


# -- idempotent publishing ----------------------------------------------------------------


async def test_a_retried_publish_with_its_key_lands_once(
    redis_url: str, subscriber: tuple[Broker, asyncio.Queue[BrokerPublication]]
) -> None:
    broker, received = subscriber
    channel = CHANNELS[1]
    async with connect_publisher(redis_url, POLICY) as publisher:
        first = await publisher.publish(channel, {"type": "t", "n": 1}, idempotency_key="job-7")
        again = await publisher.publish(channel, {"type": "t", "n": 1}, idempotency_key="job-7")
        with pytest.raises(IdempotencyConflict):
            await publisher.publish(channel, {"type": "t", "n": 2}, idempotency_key="job-7")
        control = await publisher.publish(channel, {"type": "t", "n": 3})
    assert not first.duplicate
    assert again.duplicate
    assert again == first  # the first publication's position
    got = [await asyncio.wait_for(received.get(), 10) for _ in range(2)]
    assert [(p.offset, orjson.loads(p.data)["n"]) for p in got] == [(1, 1), (2, 3)]
    assert control.offset == 2
    history = await broker.history(channel, 0, 10)
    assert [orjson.loads(p.data)["n"] for p in history.publications] == [1, 3]


async def test_an_idempotency_key_lives_for_the_window(redis_url: str) -> None:
    async with connect_publisher(redis_url, POLICY, idempotency_window=0.3) as publisher:
        first = await publisher.publish("session:w", {"type": "t"}, idempotency_key="k")
        assert (await publisher.publish("session:w", {"type": "t"}, idempotency_key="k")).duplicate
        await asyncio.sleep(0.5)  # past the window: expiry itself is the subject
        later = await publisher.publish("session:w", {"type": "t"}, idempotency_key="k")
    assert (later.offset, later.duplicate) == (first.offset + 1, False)


async def test_invalid_idempotency_keys_are_refused_before_redis(
    redis_server: RedisServer,
) -> None:
    async with connect_publisher(redis_server.url) as publisher:
        for key in ("", "has space", "x" * 129, "{brace}", "é", 5):
            with pytest.raises(InvalidPublication) as exc:
                await publisher.publish("session:x", {"type": "t"}, idempotency_key=key)  # type: ignore[arg-type]
            assert exc.value.code == "invalid_idempotency_key"
        await publisher.publish("session:x", {"type": "t"}, idempotency_key="x" * 128)
        await publisher.publish("session:x", {"type": "t"}, idempotency_key=str(uuid.uuid4()))
    assert redis_server.client().hlen("rt:{session:x}:meta") == 2


async def test_the_documented_plain_redis_layout_with_a_key(redis_url: str) -> None:
    """What a service in another language runs: EVAL with a third key and the window."""
    client: redis.Redis | redis.RedisCluster
    if is_cluster_url(redis_url):
        host, port = ClusterAddress.parse(redis_url).nodes[0]
        client = redis.RedisCluster(host=host, port=port)
    else:
        client = redis.Redis.from_url(redis_url)
    channel = "session:plain"
    keys = [f"rt:{{{channel}}}:meta", f"rt:{{{channel}}}:history", f"rt:{{{channel}}}:idem:k-1"]
    event = '{"type":"workflow_update","stage":"design"}'
    try:
        first = client.eval(publish_script.SOURCE, 3, *keys, event, 1000, 3600000, 0, 300000)
        again = client.eval(publish_script.SOURCE, 3, *keys, event, 1000, 3600000, 0, 300000)
        assert len(first) == 2
        assert again == [*first, 1]
        assert 299000 < client.pttl(keys[2]) <= 300000
        with pytest.raises(redis.ResponseError, match="idempotency_conflict"):
            client.eval(publish_script.SOURCE, 3, *keys, '{"type":"other"}', 1000, 3600000, 0)
        with pytest.raises(redis.ResponseError, match="third key"):
            client.eval(publish_script.SOURCE, 3, *keys[:2], keys[0] + ":idem:", event, 1000)
        assert client.xlen(keys[1]) == 1
    finally:
        client.close()


def test_history_lives_at_least_its_ttl_after_the_last_publish(redis_server: RedisServer) -> None:
    """Lifetimes are renewed once they run below the ttl (to the ttl and an eighth), not by
    every publish: never shorter than the ttl after a publish, whatever created the keys."""
    client = redis_server.client()
    meta, history = "rt:{session:ttl}:meta", "rt:{session:ttl}:history"
    ttl, keep = 60_000, 67_500

    def publish(size: int = 10) -> None:
        client.eval(publish_script.SOURCE, 2, meta, history, '{"n":1}', size, ttl, 0)

    def lifetimes() -> tuple[int, int]:
        return client.pttl(meta), client.pttl(history)

    publish()  # a new epoch: both keys are new
    assert all(keep - 1000 < left <= keep for left in lifetimes())
    client.pexpire(meta, ttl + 5_000)
    client.pexpire(history, ttl + 5_000)
    publish()  # above the ttl: left as it is
    assert all(ttl < left <= ttl + 5_000 for left in lifetimes())
    client.pexpire(history, 2_000)  # below it (meta too, as a publish leaves them)
    client.pexpire(meta, 2_000)
    publish()
    assert all(keep - 1000 < left <= keep for left in lifetimes())
    publish(size=0)  # no history kept: gone, and meta keeps its lifetime
    assert client.exists(history) == 0
    assert keep - 1000 < client.pttl(meta) <= keep
    publish()  # history made again under a meta that has a lifetime: it gets one too
    assert all(keep - 1000 < left <= keep for left in lifetimes())
    client.delete(meta, history)
    client.hset(meta, mapping={"epoch": "1", "offset": 0})  # as history.lua opens an epoch
    client.pexpire(meta, ttl)
    publish()  # history created by the publish: never without a lifetime
    assert all(0 < left <= keep for left in lifetimes())
    assert client.pttl(history) > keep - 1000


def test_data_is_parsed_unless_the_caller_says_it_built_it(redis_server: RedisServer) -> None:
    """Our own scripts pass `validated` for events they built (notifier/live.py); any other
    caller's data is parsed, whatever it passes there but "1"."""
    client = redis_server.client()
    keys = ["rt:{session:v}:meta", "rt:{session:v}:history"]
    for flag in ([], ["", "0"], ["", "yes"]):
        with pytest.raises(redis.ResponseError, match="JSON object"):
            client.eval(publish_script.SOURCE, 2, *keys, '{"a":', 10, 60000, 0, *flag)
    client.eval(publish_script.SOURCE, 2, *keys, '{"a":1}', 10, 60000, 0, "", "1")
    assert client.xlen(keys[1]) == 1
