"""One contract, three brokers: the embedded memory broker, one Redis and a Redis Cluster
(sharded pub/sub) behave the same."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from archmesh_client.idempotency import Idempotency, IdempotencyConflict
from archmesh_client.stream import StreamPosition

from gateway.history import history_page
from shared.broker import (
    Broker,
    BrokerPublication,
    HistoryPolicy,
    Retention,
    create_broker,
)
from shared.broker.memory import MemoryBroker
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


# -- idempotent publishing ----------------------------------------------------------------


async def test_a_repeated_idempotency_key_publishes_once(broker: tuple[Broker, Recorder]) -> None:
    b, rec = broker
    await b.subscribe("session:idem")
    once = Idempotency("order-1", 60)
    first = await b.publish("session:idem", event(1), once)
    again = await b.publish("session:idem", event(1), once)
    assert (first.offset, first.duplicate) == (1, False)
    assert (again.offset, again.epoch, again.duplicate) == (1, first.epoch, True)
    control = await b.publish("session:idem", event(2))  # no key: a publication of its own
    assert (control.offset, control.duplicate) == (2, False)
    got = [await rec.next(), await rec.next()]
    assert [(p.offset, orjson.loads(p.data)["n"]) for p in got] == [(1, 1), (2, 2)]
    assert rec.queue.empty()
    history = await b.history("session:idem", 0, 10)
    assert [p.offset for p in history.publications] == [1, 2]


async def test_a_key_is_per_channel(broker: tuple[Broker, Recorder]) -> None:
    b, _ = broker
    once = Idempotency("same-key", 60)
    assert not (await b.publish("session:k1", event(1), once)).duplicate
    assert not (await b.publish("session:k2", event(1), once)).duplicate
    assert (await b.publish("session:k1", event(1), once)).duplicate


async def test_a_key_reused_for_another_event_is_a_conflict(
    broker: tuple[Broker, Recorder],
) -> None:
    b, _ = broker
    once = Idempotency("order-2", 60)
    await b.publish("session:conflict", event(1), once)
    with pytest.raises(IdempotencyConflict):
        await b.publish("session:conflict", event(2), once)
    assert (await b.position("session:conflict")).offset == 1
    assert (await b.publish("session:conflict", event(1), once)).duplicate


async def test_a_key_is_forgotten_after_its_window(broker: tuple[Broker, Recorder]) -> None:
    b, _ = broker
    once = Idempotency("order-3", 0.3)
    first = await b.publish("session:window", event(1), once)
    assert (await b.publish("session:window", event(1), once)).duplicate
    await asyncio.sleep(0.5)  # past the window: expiry itself is the subject
    later = await b.publish("session:window", event(2), once)  # no conflict either
    assert (later.offset, later.duplicate) == (first.offset + 1, False)


async def test_concurrent_repeats_publish_once(broker: tuple[Broker, Recorder]) -> None:
    b, _ = broker
    keys = [Idempotency(f"race-{n}", 60) for n in range(20)]
    tries = [b.publish("session:race", event(n % 20), keys[n % 20]) for n in range(60)]
    results = await asyncio.gather(*tries)
    assert sum(not r.duplicate for r in results) == 20
    for n in range(20):
        assert len({(r.offset, r.epoch) for r in results[n::20]}) == 1
    assert (await b.position("session:race")).offset == 20


async def test_the_memory_broker_remembers_a_bounded_number_of_keys() -> None:
    b = MemoryBroker(idempotency_keys=2)
    for key in ("a", "b", "c"):  # "a" is forgotten to make room for "c"
        await b.publish("session:bound", event(1), Idempotency(key, 60))
    assert (await b.publish("session:bound", event(1), Idempotency("c", 60))).duplicate
    again = await b.publish("session:bound", event(1), Idempotency("a", 60))
    assert (again.offset, again.duplicate) == (4, False)


async def test_a_signal_is_delivered_as_is_outside_history(
    broker: tuple[Broker, Recorder],
) -> None:
    # Join/leave events: live to every follower, never in history, no offset taken.
    b, rec = broker
    await b.subscribe("session:sig")
    first = await b.publish("session:sig", event(1))
    frame = '{"type":"join","channel":"session:sig","user_id":"u","client_id":"c"}'
    await b.signal("session:sig", frame)
    await b.signal("session:not-followed", frame)
    second = await b.publish("session:sig", event(2))
    assert second.offset == first.offset + 1
    got = [await rec.next() for _ in range(3)]
    assert got[1] == BrokerPublication("session:sig", frame, signal=True)
    assert [(p.offset, p.signal) for p in got] == [
        (first.offset, False),
        (None, True),
        (second.offset, False),
    ]
    history = await b.history("session:sig", 0, 10)
    assert [p.offset for p in history.publications] == [first.offset, second.offset]
    assert rec.queue.empty()


async def test_history_pages_forwards_and_in_reverse(broker: tuple[Broker, Recorder]) -> None:
    """The paging rule of the `history` frame over each broker's history read, trimmed to
    the channel's retention (5 kept): pages hold what is kept, in page order."""
    instance, _ = broker
    positions = [await instance.publish("session:pages", event(n)) for n in range(1, 8)]
    head = positions[-1]

    async def page(limit: int, since: StreamPosition | None = None, reverse: bool = False):
        got = await history_page(instance.history, "session:pages", limit, since, reverse, 100)
        assert got.position == head
        return [offset for offset, _ in got.publications]

    assert await page(10) == [3, 4, 5, 6, 7]  # 1 and 2 are trimmed
    assert await page(2, positions[3]) == [5, 6]
    assert await page(3, reverse=True) == [7, 6, 5]
    assert await page(3, positions[5], reverse=True) == [5, 4, 3]
    assert await page(3, positions[2], reverse=True) == []  # before what is kept
    assert await page(0) == []
    assert await page(5, StreamPosition(2, "another-epoch")) == []
    assert await page(5, StreamPosition(2, "another-epoch"), reverse=True) == []
