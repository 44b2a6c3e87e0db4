"""A partition's batches overlap (one is planned while Redis records the one before): on a real
Redis, the decisions and the order are those of a strictly sequential run, and a replica killed
with batches in flight loses nothing and records nothing twice."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from archmesh_client.notifications import NotificationRequest
from archmesh_client.notifier import NotifierClient

from notifier import keys
from notifier.app import Notifier
from tests.notifier_stack import notifier_settings
from tests.servers import NotifierProcess, RedisServer

pytestmark = pytest.mark.redis

HOT = ["h0", "h1", "h2"]
KINDS = ["ping", "like", "note"]  # throttled 3/1h; a digest of max 3, its first sent at once


def backlog(total: int) -> list[NotificationRequest]:
    """Every 8th request is one of three users' (a ping, a like or a plain note in turn), so
    each batch of 200 has ~8 of each, as the batch before it: their requests are held back
    round after round. A filler user's request and a hot user's come again (a producer's
    retry) one batch later, with the same id."""
    requests = []
    for n in range(total):
        if n % 8 == 0:
            turn = n // 8
            user, kind = HOT[turn % 3], KINDS[(turn // 3) % 3]
        else:
            user, kind = f"f{n}", "note"
        requests.append(
            NotificationRequest(
                id=f"r{n}", user_id=user, type=kind, title=f"t{n}", channels=["in_app"]
            )
        )
    retries = [requests[5], requests[16]]  # f5's and h2's
    return [*requests[:210], *retries, *requests[210:]]


async def in_app(redis: aioredis.Redis, notification_id: str) -> dict[str, Any]:
    raw = await redis.hget(keys.notification(notification_id), "ch:in_app")
    assert raw is not None, notification_id
    return dict(orjson.loads(raw))


async def drained(notifier: Notifier, within: float) -> None:
    deadline = time.monotonic() + within
    while await notifier.intake.backlog() != (0, 0):
        assert time.monotonic() < deadline, await notifier.intake.backlog()
        await asyncio.sleep(0.02)


async def test_overlapping_batches_decide_and_order_as_one_after_the_other(
    private_redis: RedisServer,
) -> None:
    settings = notifier_settings(
        private_redis.url,
        notifier_throttles="ping=3/1h",
        notifier_digests="like=window:1h;max:3;first:now;in_app:digest",
    )
    notifier = Notifier(settings)
    redis = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    requests = backlog(1200)
    await notifier.intake.ensure_group()
    for start in range(0, len(requests), 100):
        await notifier.intake.enqueue(requests[start : start + 100])
    async with notifier.lifespan():
        await drained(notifier, 60)
        # The digests that filled close now; their own requests are processed as well.
        await asyncio.sleep(0.5)
        await drained(notifier, 30)

    accepted = notifier.metrics.processed.labels("accepted")._value.get()  # type: ignore[attr-defined]
    assert accepted >= 1200
    duplicates = notifier.metrics.processed.labels("duplicate")._value.get()  # type: ignore[attr-defined]
    assert duplicates == 2
    for user in HOT:
        mine = [r for r in requests[:210] + requests[212:] if r.user_id == user]
        pings = [r for r in mine if r.type == "ping"]
        assert len(pings) > 5
        # The throttle admits exactly the first three pings, in the order they were queued.
        ping_states = [(await in_app(redis, r.id))["status"] for r in pings]
        assert ping_states == ["sent"] * 3 + ["suppressed"] * (len(pings) - 3)
        likes = [r for r in mine if r.type == "like"]
        assert (await in_app(redis, likes[0].id))["status"] == "sent"  # opens the first window
        # The inbox holds the user's sent requests in the order they were queued.
        sent = [r.id for r in mine if (await in_app(redis, r.id))["status"] == "sent"]
        order = await redis.zrange(keys.inbox(user).order, 0, -1)
        assert [i for i in order if i in {r.id for r in mine}] == sent
    # Each request recorded once: one timeline entry each, one inbox item each.
    for r in requests[:210]:
        assert await redis.llen(keys.timeline(r.id)) == 1, r.id
    assert await redis.zcard(keys.inbox("f5").order) == 1
    await redis.aclose()


async def test_a_digest_window_the_commit_in_flight_fills_is_seen_by_the_next_batch(
    private_redis: RedisServer,
) -> None:
    """The worker's protocol step by step: batch 2 is prepared while batch 1 (whose fourth like
    fills the digest window) is not yet recorded; h0's requests of batch 2 wait for it, so the
    fifth like opens the next window and is sent at once, as it would be one after the other."""
    settings = notifier_settings(
        private_redis.url, notifier_digests="like=window:1h;max:3;first:now;in_app:digest"
    )
    notifier = Notifier(settings)
    processor = notifier.worker.processor
    redis = aioredis.Redis.from_url(private_redis.url, decode_responses=True)

    def req(rid: str, user: str, kind: str = "like") -> NotificationRequest:
        return NotificationRequest(id=rid, user_id=user, type=kind, title=rid, channels=["in_app"])

    await notifier.intake.ensure_group()
    await notifier.intake.enqueue([*(req(f"L{n}", "h0") for n in range(1, 5)), req("N1", "f1")])
    first = await notifier.intake.read(100, None)
    staged, later = await processor.read(first)
    assert later == []
    batch1 = await processor.plan(staged)

    await notifier.intake.enqueue(
        [req("L5", "h0"), req("N2", "f2", "note"), req("L6", "h0"), req("N1", "f1")]
    )
    second = await notifier.intake.read(100, None)
    prepared, later = await processor.read(second, busy=batch1)
    assert [e.request_json for e in later] == [second[i].request_json for i in (0, 2, 3)]
    in_flight = asyncio.create_task(processor.commit(batch1))
    batch2 = await processor.plan(prepared)
    await in_flight
    await processor.commit(batch2)
    await processor.process(later)

    states = {rid: (await in_app(redis, rid))["status"] for rid in ("L1", "L2", "L3", "L4")}
    assert states == {"L1": "sent", "L2": "digested", "L3": "digested", "L4": "digested"}
    assert (await in_app(redis, "L5"))["status"] == "sent"  # the next window's first
    assert (await in_app(redis, "L6"))["status"] == "digested"
    assert (await in_app(redis, "N2"))["status"] == "sent"
    assert await redis.zrange(keys.inbox("h0").order, 0, -1) == ["L1", "L5"]
    assert await redis.llen(keys.timeline("N1")) == 1  # its retry acknowledged as a duplicate
    assert await redis.xlen(keys.requests()) == 0
    await redis.aclose()
    await notifier.redis.aclose()  # driven step by step, without its lifespan (which closes it)


async def test_a_replica_killed_with_batches_in_flight_loses_and_repeats_nothing(
    private_redis: RedisServer, notifiers: list[NotifierProcess]
) -> None:
    env = {"ARCHMESH_NOTIFIER_CLAIM_IDLE": "1", "ARCHMESH_LOG_LEVEL": "warning"}
    redis = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    total = 8000
    users = [f"u{n}" for n in range(400)]
    async with NotifierClient(private_redis.url) as client:
        for start in range(0, total, 500):
            result = await client.send_batch(
                [
                    {
                        "id": f"k{n}",
                        "user_id": users[n % len(users)],
                        "type": "bench_event",
                        "title": f"k{n}",
                        "channels": ["in_app"],
                    }
                    for n in range(start, start + 500)
                ]
            )
            assert result.successful == 500
    victim = NotifierProcess(private_redis.url, **env).start()
    notifiers.append(victim)

    async def recorded() -> int:
        return int(sum([await redis.zcard(keys.inbox(user).order) for user in users]))

    deadline = time.monotonic() + 60
    while await recorded() < total // 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    victim.stop(signal.SIGKILL)
    at_kill = await recorded()
    assert 0 < at_kill < total, at_kill
    notifiers.append(NotifierProcess(private_redis.url, **env).start())
    deadline = time.monotonic() + 90
    while await recorded() < total and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # a second recording of anything would land now
    assert await recorded() == total
    assert await redis.xlen(keys.requests()) == 0
    assert await redis.xlen(keys.dead_letters()) == 0
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(total):
            pipe.llen(keys.timeline(f"k{n}"))
        lengths = await pipe.execute()
    assert set(lengths) == {1}  # every notification's outcome recorded exactly once
    await redis.aclose()
