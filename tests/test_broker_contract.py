"""One contract, three brokers: the embedded memory broker, one Redis and a Redis Cluster
(sharded pub/sub) behave the same."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from shared.broker import (
    Broker,
    BrokerPublication,
    HistoryPolicy,
    Retention,
    create_broker,
)
from tests.servers import RedisServer


class Recorder:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[BrokerPublication] = asyncio.Queue()
        self.states: list[bool] = []

    def on_message(self, pub: BrokerPublication) -> None:
        self.queue.put_nowait(pub)

    def on_state(self, connected: bool) -> None:
        self.states.append(connected)

    async def next(self) -> BrokerPublication:
        return await asyncio.wait_for(self.queue.get(), 5)


POLICY = HistoryPolicy.parse(Retention(size=5, ttl=60), "user:=2/60,session:short-=3/0.3")


@pytest.fixture
async def broker(backend_url: str) -> AsyncIterator[tuple[Broker, Recorder]]:
    instance = create_broker(backend_url, POLICY)
    recorder = Recorder()
    await instance.start(recorder.on_message, recorder.on_state)
    await _until(lambda: instance.connected)
    yield instance, recorder
    await instance.close()


async def _until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def event(n: int) -> str:
    return orjson.dumps({"type": "workflow_update", "n": n}).decode()


async def test_subscribed_channel_receives_in_offset_order(broker: tuple[Broker, Recorder]) -> None:
    b, rec = broker
    await b.subscribe("session:a")
    positions = [await b.publish("session:a", event(n)) for n in range(3)]
    assert [p.offset for p in positions] == [1, 2, 3]
    assert len({p.epoch for p in positions}) == 1
    got = [await rec.next() for _ in range(3)]
    assert [(p.channel, p.offset, orjson.loads(p.data)["n"]) for p in got] == [
        ("session:a", 1, 0),
        ("session:a", 2, 1),
        ("session:a", 3, 2),
    ]
    assert {p.epoch for p in got} == {positions[0].epoch}


async def test_unsubscribed_channel_is_not_delivered(broker: tuple[Broker, Recorder]) -> None:
    b, rec = broker
    await b.subscribe("session:a")
    await b.subscribe("session:b")
    await b.unsubscribe("session:a")
    await b.publish("session:a", event(1))
    await b.publish("session:b", event(2))
    assert (await rec.next()).channel == "session:b"
    assert rec.queue.empty()


async def test_history_after_offset_and_trimming(broker: tuple[Broker, Recorder]) -> None:
    b, _ = broker
    for n in range(8):
        await b.publish("session:h", event(n))
    recent = await b.history("session:h", 5, 100)
    assert recent.complete
    assert [p.offset for p in recent.publications] == [6, 7, 8]
    assert recent.position.offset == 8
    trimmed = await b.history("session:h", 1, 100)  # size 5 keeps 4..8
    assert not trimmed.complete
    assert (await b.history("session:h", 3, 100)).complete
    assert (await b.history("session:h", 8, 100)).publications == []
    assert not (await b.history("session:h", 9, 100)).complete
    cut_short = await b.history("session:h", 3, 2)
    assert [p.offset for p in cut_short.publications] == [4, 5]
    assert not cut_short.complete


async def test_retention_per_prefix(broker: tuple[Broker, Recorder]) -> None:
    b, _ = broker
    for n in range(4):
        await b.publish("user:u1", event(n))
    history = await b.history("user:u1", 0, 100)
    assert [p.offset for p in history.publications] == [3, 4]
    assert not history.complete


async def test_expired_history_starts_a_new_epoch(broker: tuple[Broker, Recorder]) -> None:
    b, _ = broker
    first = await b.publish("session:short-1", event(1))
    await asyncio.sleep(0.5)  # past the 0.3 s ttl of this prefix: expiry itself is the subject
    after = await b.history("session:short-1", first.offset, 10)
    assert after.position.epoch != first.epoch
    assert after.position.offset == 0
    second = await b.publish("session:short-1", event(2))
    assert second.offset == 1
    assert second.epoch == after.position.epoch


async def test_position_of_a_fresh_channel_is_stable(broker: tuple[Broker, Recorder]) -> None:
    b, _ = broker
    before = await b.position("session:fresh")
    published = await b.publish("session:fresh", event(1))
    assert before.offset == 0
    assert published.epoch == before.epoch
    assert published.offset == 1


async def test_redis_bare_publish_is_delivered_without_offset(redis_server: RedisServer) -> None:
    b = create_broker(redis_server.url)
    rec = Recorder()
    await b.start(rec.on_message)
    try:
        await b.subscribe("session:bare")
        await _until(lambda: b.connected)
        client = redis_server.client()
        await _until(lambda: client.pubsub_numsub("rt:{session:bare}")[0][1] == 1)
        client.publish("rt:{session:bare}", b'{"type":"workflow_update","stage":"x"}')
        client.publish("rt:{session:bare}", b"not json")  # dropped with a warning, not delivered
        client.publish("rt:{session:bare}", b'{"type":"after"}')
        got = [await rec.next(), await rec.next()]
        assert [(p.offset, orjson.loads(p.data)["type"]) for p in got] == [
            (None, "workflow_update"),
            (None, "after"),
        ]
    finally:
        await b.close()


async def test_redis_publish_script_rejects_non_objects(redis_server: RedisServer) -> None:
    from shared.broker import BrokerError

    b = create_broker(redis_server.url)
    try:
        with pytest.raises(BrokerError, match="JSON object"):
            await b.publish("session:x", "[1, 2]")
        with pytest.raises(BrokerError, match="JSON object"):
            await b.publish("session:x", "{broken")
        assert (await b.position("session:x")).offset == 0
    finally:
        await b.close()


def test_unknown_scheme_fails_loudly() -> None:
    with pytest.raises(ValueError, match="unknown broker URL scheme"):
        create_broker("kafka://localhost")


async def test_publish_many_in_order_across_channels(broker: tuple[Broker, Recorder]) -> None:
    b, rec = broker
    await b.subscribe("session:m1")
    await b.subscribe("user:m2")
    # A fresh broker has never run the script: on Redis the batch must load it first.
    items = [("session:m1", event(1)), ("user:m2", event(2)), ("session:m1", event(3))]
    positions = await b.publish_many(items)
    assert [p.offset for p in positions] == [1, 1, 2]
    got = [await rec.next() for _ in items]
    by_channel = {c: [p.offset for p in got if p.channel == c] for c in ("session:m1", "user:m2")}
    assert by_channel == {"session:m1": [1, 2], "user:m2": [1]}
    assert await b.publish_many([]) == []
