"""History reads made in one event-loop turn leave in one pipeline, identical ones are made once,
and revocation checks of one turn are one MGET (shared/broker/reads.py), against a real Redis:
every caller still gets its own answer."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from gateway.metrics import GatewayMetrics
from shared.broker import BrokerError, Liveness
from shared.broker.reads import TurnBatch
from shared.broker.redis import RedisBroker
from shared.revocations import RedisRevocationStore
from tests.servers import RedisServer


def evalsha_calls(server: RedisServer) -> int:
    stats = server.client().info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def published(broker: RedisBroker, channel: str, count: int) -> None:
    for n in range(count):
        await broker.publish(channel, orjson.dumps({"n": n}).decode())


async def test_identical_reads_are_made_once_and_others_share_a_pipeline(
    redis_server: RedisServer,
) -> None:
    broker = RedisBroker(redis_server.url)
    metrics = GatewayMetrics()
    metrics.count_reads(broker.history_reads)

    def reads_of(outcome: str) -> float | None:
        labels = {"outcome": outcome}
        return metrics.registry.get_sample_value("archmesh_history_reads_total", labels)

    try:
        await published(broker, "session:reads-a", 3)
        await published(broker, "session:reads-b", 2)
        await broker.history("session:reads-a", 0, 0)  # the script is loaded
        before = evalsha_calls(redis_server)
        assert (reads_of("issued"), reads_of("merged")) == (1, 0)
        reads = [broker.history("session:reads-a", 0, 10) for _ in range(10)]
        reads += [broker.history("session:reads-a", 2, 10), broker.history("session:reads-b", 0, 1)]
        answers = await asyncio.gather(*reads)
        assert evalsha_calls(redis_server) - before == 3  # three distinct reads
        assert (reads_of("issued"), reads_of("merged")) == (4, 9)  # what the node exports
        for answer in answers[:10]:
            assert [orjson.loads(p.data)["n"] for p in answer.publications] == [0, 1, 2]
            assert answer.position.offset == 3
            assert answer.complete
        assert [p.offset for p in answers[10].publications] == [3]
        assert [p.offset for p in answers[11].publications] == [1]
        assert answers[11].position.offset == 2
    finally:
        await broker.close()


async def test_a_cancelled_reader_leaves_the_shared_read_to_the_others(
    redis_server: RedisServer,
) -> None:
    broker = RedisBroker(redis_server.url)
    try:
        await published(broker, "session:reads-c", 2)
        first = asyncio.ensure_future(broker.history("session:reads-c", 0, 10))
        second = asyncio.ensure_future(broker.history("session:reads-c", 0, 10))
        await asyncio.sleep(0)  # both asked in this turn
        first.cancel()
        answer = await second
        assert [p.offset for p in answer.publications] == [1, 2]
        with pytest.raises(asyncio.CancelledError):
            await first
    finally:
        await broker.close()


async def test_a_batch_reloads_the_script_a_restarted_server_lost(
    redis_server: RedisServer,
) -> None:
    broker = RedisBroker(redis_server.url)
    try:
        await published(broker, "session:reads-d", 2)
        await broker.history("session:reads-d", 0, 0)
        redis_server.client().script_flush()
        answers = await asyncio.gather(
            broker.history("session:reads-d", 0, 10), broker.history("session:reads-d", 1, 10)
        )
        assert [[p.offset for p in a.publications] for a in answers] == [[1, 2], [2]]
    finally:
        await broker.close()


async def test_every_reader_of_a_failed_batch_gets_a_broker_error(
    private_redis: RedisServer,
) -> None:
    broker = RedisBroker(private_redis.url)
    try:
        await broker.history("session:reads-e", 0, 0)
        private_redis.stop()
        answers = await asyncio.gather(
            broker.history("session:reads-e", 0, 10),
            broker.history("session:reads-f", 0, 10),
            return_exceptions=True,
        )
        assert all(isinstance(answer, BrokerError) for answer in answers), answers
    finally:
        await broker.close()


async def test_revocation_checks_of_one_turn_are_one_mget(redis_server: RedisServer) -> None:
    store = RedisRevocationStore(redis_server.url, Liveness(), cluster=False)
    try:
        now = time.time()
        await store.revoke_token("bad-jti", now + 60)
        await store.revoke_user("mallory", now, now + 60)
        stats = redis_server.client().info("commandstats")
        before = int(stats.get("cmdstat_mget", {}).get("calls", 0))
        answers = await asyncio.gather(
            store.revoked("bad-jti", "alice", now),  # its token
            store.revoked("good-jti", "alice", now),
            store.revoked(None, "mallory", now - 10),  # issued before the cut-off
            store.revoked(None, "mallory", now + 10),
            store.revoked(None, "bob", None),
        )
        assert answers == [True, False, True, False, False]
        stats = redis_server.client().info("commandstats")
        assert int(stats["cmdstat_mget"]["calls"]) - before == 1
    finally:
        await store.close()


def command_calls(server: RedisServer, name: str) -> int:
    stats = server.client().info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


async def test_reads_asked_while_a_batch_is_in_flight_leave_together_after_it() -> None:
    """The batching itself (TurnBatch), with a round trip that takes a while."""
    batches: list[list[int]] = []

    async def one(key: int) -> int:
        batches.append([key])
        await asyncio.sleep(0.02)
        return key * 10

    async def many(keys: list[int]) -> list[int | BaseException]:
        batches.append(keys)
        await asyncio.sleep(0.02)
        return [key * 10 for key in keys]

    batch = TurnBatch[int, int](one, many)
    first = asyncio.ensure_future(batch.read(1))
    await asyncio.sleep(0.005)  # its batch is on its way
    later = []
    for key in (2, 3, 2):  # asked over several turns meanwhile
        later.append(asyncio.ensure_future(batch.read(key)))
        await asyncio.sleep(0)
    assert await asyncio.gather(first, *later) == [10, 20, 30, 20]
    assert batches == [[1], [2, 3]]
    assert (batch.counts.asked, batch.counts.issued) == (4, 3)
    assert await batch.read(4) == 40  # an idle batcher sends at the end of the turn
    assert batches[-1] == [4]
    await batch.close()


async def test_revocation_checks_made_while_one_is_in_flight_share_the_next_mget(
    redis_server: RedisServer,
) -> None:
    store = RedisRevocationStore(redis_server.url, Liveness(), cluster=False)
    try:
        now = time.time()
        await store.revoke_token("late-bad", now + 60)
        await store.revoked(None, "warm", None)  # a connection exists
        before = command_calls(redis_server, "mget") + command_calls(redis_server, "get")
        first = asyncio.ensure_future(store.revoked("first", "carol", now))
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # its MGET is on its way
        later = []
        for jti in ("late-bad", "late-good-1", "late-good-2"):
            later.append(asyncio.ensure_future(store.revoked(jti, "dave", now)))
            await asyncio.sleep(0)
        answers = await asyncio.gather(first, *later)
        assert answers == [False, True, False, False]
        after = command_calls(redis_server, "mget") + command_calls(redis_server, "get")
        assert after - before == 2  # the first check's MGET, then one for the three later
    finally:
        await store.close()


async def test_every_check_of_a_batch_fails_with_a_broker_error_in_an_outage(
    private_redis: RedisServer,
) -> None:
    """What admission needs to admit unchecked and check again once Redis is back."""
    store = RedisRevocationStore(private_redis.url, Liveness(), cluster=False)
    try:
        assert not await store.revoked("j", "erin", None)
        private_redis.stop()
        answers = await asyncio.gather(
            *(store.revoked(f"j{i}", f"user{i}", None) for i in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(answer, BrokerError) for answer in answers), answers
    finally:
        await store.close()


async def test_subscribes_of_a_burst_are_one_subscribe_and_all_take_effect(
    redis_server: RedisServer,
) -> None:
    received: list[str] = []
    broker = RedisBroker(redis_server.url)
    await broker.start(lambda pub: received.append(pub.channel))
    try:
        for _ in range(100):
            if broker.connected:
                break
            await asyncio.sleep(0.05)
        before = command_calls(redis_server, "subscribe")
        channels = [f"user:burst-{n}" for n in range(20)]
        await asyncio.gather(*(broker.subscribe(c) for c in channels))
        await broker.unsubscribe(channels[0])
        await broker.subscribe(channels[0])  # in order: subscribed at the end
        assert command_calls(redis_server, "subscribe") - before <= 3
        for channel in channels:
            await broker.publish(channel, orjson.dumps({"c": channel}).decode())
        for _ in range(100):
            if sorted(received) == sorted(channels):
                break
            await asyncio.sleep(0.05)
        assert sorted(received) == sorted(channels)
    finally:
        await broker.close()
