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
