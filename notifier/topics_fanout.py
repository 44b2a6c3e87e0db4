"""Fanning a topic request out: one ordinary per-user request per subscriber, in batches.

A topic request read from the intake becomes a durable job (`keys.fanout`: the request, the
cursor, the state) and a member of `nt:due`, claimed with a lease and run by the delivery loop
like a digest's close: a replica that dies mid-way leaves the lease to run out, and the next
replica resumes from the cursor. A batch is at most `batch` subscribers (ZRANGEBYLEX from the
cursor), so a topic of any size is never held in memory.

The batch's enqueue and the cursor's advance are two steps, not one: a crash between them
enqueues that batch again. That is harmless by construction: each subscriber's request has a
deterministic id (`member_id`), and the notifier processes an id once (prepare.lua finds it
recorded and acknowledges the copy), so at-least-once enqueue is exactly once per user."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from datetime import datetime

import redis.asyncio as aioredis
from archmesh_client.notifications import NotificationRequest
from archmesh_client.topics import page

from notifier import keys
from notifier.intake import Intake
from shared.logging import get_logger

log = get_logger(__name__)

_MAX_ID = 128  # ID_PATTERN's limit
DONE = "done"


def member_id(request_id: str, user_id: str) -> str:
    """The subscriber's request id: `<request id>|<user id>` (a topic request's id has no
    `|`), or, past the id length limit, the request id's start and a hash of the pair."""
    joined = f"{request_id}|{user_id}"
    if len(joined) <= _MAX_ID:
        return joined
    digest = hashlib.sha256(joined.encode()).hexdigest()[:40]
    return f"{request_id[:80]}|{digest}"


def for_member(request: NotificationRequest, user_id: str) -> NotificationRequest:
    """The topic request as one subscriber's own request (their preferences, quiet hours,
    escalation, digests and throttles apply as to any request of theirs)."""
    return request.model_copy(
        update={
            "id": member_id(request.id, user_id),
            "user_id": user_id,
            "topic": None,
            "exclude": [],
        }
    )


class TopicFanout:
    def __init__(
        self,
        redis: aioredis.Redis,
        intake: Intake,
        clock: Callable[[], datetime],
        *,
        batch: int,
        retention: float,
    ) -> None:
        self._redis = redis
        self._intake = intake
        self._clock = clock
        self._batch = batch
        self._retention = int(retention)

    async def start(self, requests: Iterable[NotificationRequest]) -> dict[str, str]:
        """Record each request's job (once: a request read again finds its job, running or
        done) and make the unfinished ones due now; the refused (unknown template: every
        subscriber's copy would be dead-lettered) by id, with the reason. The caller
        acknowledges the entries after, so a crash before that only repeats this."""
        asked = [r for r in requests if r.topic is not None]
        if not asked:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for request in asked:
                pipe.exists(keys.template(request.template or ""))
            found = await pipe.execute()
        refused = {
            r.id: f"unknown template {r.template!r}"
            for r, exists in zip(asked, found, strict=True)
            if r.template is not None and not exists
        }
        asked = [r for r in asked if r.id not in refused]
        async with self._redis.pipeline(transaction=False) as pipe:
            for request in asked:
                assert request.topic is not None
                key = keys.fanout(request.topic, request.id)
                pipe.hsetnx(key, "request", request.model_dump_json())
                pipe.hget(key, "state")
            replies = await pipe.execute()
        states = replies[1::2]
        now_ms = int(self._clock().timestamp() * 1000)
        for r, state in zip(asked, states, strict=True):
            if r.topic is not None and state != DONE:
                due = keys.due(keys.fanout_partition(r.topic))
                await self._redis.zadd(due, {keys.fanout_job(r.topic, r.id): now_ms}, nx=True)
        return refused

    async def run(self, job: str) -> int:
        """Walk the topic from the job's cursor to its end; the requests it enqueued."""
        topic, _, request_id = job.removeprefix(keys.FANOUT_JOB).partition("|")
        key = keys.fanout(topic, request_id)
        due = keys.due(keys.fanout_partition(topic))
        raw, saved, state = await self._redis.hmget(key, ["request", "cursor", "state"])
        if raw is None or state == DONE:
            await self._redis.zrem(due, job)
            return 0
        request = NotificationRequest.model_validate_json(raw)
        excluded = frozenset(request.exclude)
        cursor = str(saved) if saved else None
        enqueued = 0
        while True:
            found = await page(self._redis, topic, cursor, self._batch)
            members = [for_member(request, u) for u in found.users if u not in excluded]
            if members:
                await self._intake.enqueue(members)
                enqueued += len(members)
            if found.users:
                cursor = found.users[-1]
                await self._redis.hset(key, "cursor", cursor)
            if found.next_cursor is None:
                break
        # Kept (done) as long as statuses are: the same request read again is not fanned out
        # again (and if it were, its members' ids would make it harmless).
        async with self._redis.pipeline(transaction=False) as pipe:  # two slots on a Cluster
            pipe.hset(key, "state", DONE)
            pipe.expire(key, self._retention)
            pipe.zrem(due, job)
            await pipe.execute()
        log.info("topic_fanned_out", topic=topic, request=request_id, enqueued=enqueued)
        return enqueued
