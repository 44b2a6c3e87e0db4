"""External deliveries (email, push, SMS): due jobs in one sorted set, claimed with a lease.

A job is `<id>|<channel>` scored by when it is due. Claiming moves its score a lease ahead, so
a replica that dies mid-send leaves it to be claimed again when the lease runs out; finishing
removes it in the same script that records the outcome (record_delivery.lua). Retries and
quiet-hours holds are the same job with a later score."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from archmesh_client.backoff import backoff_delay
from archmesh_client.notifications import Medium, Priority

from notifier import keys
from notifier.delivery_record import DeliveryRecorder
from notifier.digests import DigestCloser
from notifier.escalation import StepGate
from notifier.metrics import NotifierMetrics
from notifier.persist import persist
from notifier.preferences import PreferenceStore
from notifier.schemas import TERMINAL_STATES, ChannelDelivery, DeliveryState
from notifier.senders.base import DeliveryError, SubscriptionGone, Suppressed
from notifier.senders.email import EmailMessage, EmailSender
from notifier.senders.push import PushSender, PushTarget
from notifier.senders.sms import SmsSender
from notifier.status import StatusStore
from notifier.topics_fanout import TopicFanout
from shared.logging import get_logger
from shared.lua import lua

if TYPE_CHECKING:
    from notifier.feedback import ProviderFeedback

log = get_logger(__name__)

RECORD_PATIENCE = 60.0  # seconds: how long a sent attempt's record is retried (see below)

_URGENCY = {
    Priority.LOW: "low",
    Priority.NORMAL: "normal",
    Priority.HIGH: "high",
    Priority.URGENT: "high",
}


@dataclass(frozen=True, slots=True)
class Senders:
    email: EmailSender | None = None
    push: PushSender | None = None
    sms: SmsSender | None = None

    @property
    def configured(self) -> frozenset[Medium]:
        pairs = ((Medium.EMAIL, self.email), (Medium.PUSH, self.push), (Medium.SMS, self.sms))
        return frozenset(channel for channel, sender in pairs if sender is not None)

    async def aclose(self) -> None:
        for sender in (self.email, self.push, self.sms):
            if sender is not None:
                await sender.aclose()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    base: float
    cap: float
    lease: float
    push_ttl: int


@dataclass(slots=True)
class _Outcome:
    remaining: list[Any]
    sent: int = 0
    error: DeliveryError | None = None
    gone: list[str] = field(default_factory=list)


class Deliverer:
    def __init__(
        self,
        redis: aioredis.Redis,
        statuses: StatusStore,
        preferences: PreferenceStore,
        senders: Senders,
        policy: RetryPolicy,
        metrics: NotifierMetrics,
        clock: Callable[[], datetime],
        steps: StepGate,
        digests: DigestCloser,
        email_headers: Callable[[str, str], dict[str, str]] | None = None,
        feedback: ProviderFeedback | None = None,
        fanouts: TopicFanout | None = None,
    ) -> None:
        """`email_headers(user_id, type)`: extra headers of an email (unsubscribe links).
        `feedback`: the suppression list to check, where SMS sids are remembered.
        `fanouts` runs topic fan-out jobs (leased and renewed here like any job)."""
        self._redis = redis
        self._fanouts = fanouts
        self._steps = steps
        self._digests = digests
        self._feedback = feedback
        self._email_headers = email_headers
        self._statuses = statuses
        self._preferences = preferences
        self._senders = senders
        self._policy = policy
        self._metrics = metrics
        self._clock = clock
        self._claim = redis.register_script(lua("notifier.scripts", "claim.lua"))
        self._recorder = DeliveryRecorder(redis)
        self._running: set[tuple[int, str]] = set()
        self._next = 0  # the partition claimed from first, in turn

    async def renew(self) -> None:
        """Push the leases of the jobs this replica is sending a lease ahead again, so a lease
        can be short (a dead replica's jobs come back quickly) yet never end mid-send."""
        if not self._running:
            return
        until = int((self._clock().timestamp() + self._policy.lease) * 1000)
        by_partition: dict[int, list[str]] = {}
        for partition, job in self._running:
            by_partition.setdefault(partition, []).append(job)
        for partition, jobs in by_partition.items():
            await self._redis.zadd(keys.due(partition), dict.fromkeys(jobs, until), xx=True)

    async def claim(self, limit: int) -> list[tuple[int, str]]:
        """Due jobs of every partition (each job's lease keeps replicas apart), the partitions
        taken in turn so that none waits behind a busy one."""
        now_ms = int(self._clock().timestamp() * 1000)
        lease_ms = int(self._policy.lease * 1000)
        count = len(keys.partitions())
        taken: list[tuple[int, str]] = []
        for step in range(count):
            if len(taken) >= limit:
                break
            partition = (self._next + step) % count
            due = keys.due(partition)
            jobs: list[str] = await self._claim([due], [now_ms, lease_ms, limit - len(taken)])
            taken += [(partition, job) for job in jobs if (partition, job) not in self._running]
        self._next = (self._next + 1) % count
        return taken

    async def next_due(self) -> float | None:
        """Seconds until the earliest job is due (0 if now), None when there is none."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition in keys.partitions():
                pipe.zrange(keys.due(partition), 0, 0, withscores=True)
            firsts: list[list[tuple[str, float]]] = await pipe.execute()
        scores = [first[0][1] for first in firsts if first]
        if not scores:
            return None
        return max(0.0, min(scores) / 1000 - self._clock().timestamp())

    async def run(self, job: tuple[int, str]) -> None:
        """Attempt one job (of one partition); every outcome is recorded, none raises."""
        self._running.add(job)
        try:
            await self._run(*job)
        except Exception:
            # Left in the set with its lease: it is attempted again when the lease ends.
            log.exception("delivery_job_crashed", job=job[1])
        finally:
            self._running.discard(job)

    async def _run(self, partition: int, job: str) -> None:
        if job.startswith(keys.DIGEST_JOB):
            digest_id = job.removeprefix(keys.DIGEST_JOB)
            sent = await self._digests.close(digest_id, self._clock(), partition)
            if sent:
                log.info("digest_closed", digest=job, events=sent)
            return
        if job.startswith(keys.FANOUT_JOB) and self._fanouts is not None:
            await self._fanouts.run(job)
            return
        notification_id, _, name = job.rpartition("|")
        channel = Medium(name)
        loaded = await self._statuses.job(notification_id, channel, partition)
        if loaded is None or loaded[1].status in TERMINAL_STATES:
            await self._redis.zrem(keys.due(partition), job)
            return
        meta, delivery, work = loaded
        unless = work.get("unless") and delivery.attempts == 0
        if unless and await self._steps.stopped(partition, job, meta, channel, work):
            return
        started = time.perf_counter()
        outcome = await self._send(channel, meta, work)
        self._metrics.send_seconds.labels(channel.value).observe(time.perf_counter() - started)
        for endpoint in outcome.gone:
            await self._preferences.remove_push_subscription(meta["user_id"], endpoint)
        await self._record(partition, job, meta, channel, delivery.attempts + 1, work, outcome)

    async def _send(self, channel: Medium, meta: dict[str, Any], work: dict[str, Any]) -> _Outcome:
        outcome = _Outcome(remaining=list(work["targets"]))
        for target in list(outcome.remaining):
            try:
                await self._send_one(channel, meta, target, work["content"])
            except SubscriptionGone as exc:
                outcome.remaining.remove(target)
                outcome.gone.append(exc.endpoint)
                outcome.error = exc
            except DeliveryError as exc:
                outcome.error = exc
                if exc.permanent:
                    outcome.remaining.remove(target)
            else:
                outcome.remaining.remove(target)
                outcome.sent += 1
        return outcome

    async def _send_one(
        self, channel: Medium, meta: dict[str, Any], target: Any, content: dict[str, str]
    ) -> None:
        senders = self._senders
        if channel is Medium.EMAIL and senders.email is not None:
            if self._feedback and (why := await self._feedback.email_suppression(target)):
                raise Suppressed(why)
            message = EmailMessage(
                to=target,
                subject=content["subject"],
                text=content["text"],
                html=content.get("html"),
                message_id=f"{meta['id']}.email",
                headers=tuple(self._headers(meta).items()),
                notification_id=meta["id"],
            )
            await senders.email.send(message)
        elif channel is Medium.SMS and senders.sms is not None:
            sid = await senders.sms.send(target, content["text"])
            if self._feedback is not None:  # its status callbacks find the delivery by sid
                await self._feedback.sms_sent(sid, meta["id"])
        elif channel is Medium.PUSH and senders.push is not None:
            payload = {
                "id": meta["id"],
                "type": meta["type"],
                "title": content["title"],
                "body": content.get("body", ""),
            }
            push = PushTarget(target["endpoint"], target["keys"]["p256dh"], target["keys"]["auth"])
            urgency = _URGENCY[Priority(meta["priority"])]
            await senders.push.send(push, payload, ttl=self._policy.push_ttl, urgency=urgency)
        else:
            raise DeliveryError(
                f"{channel.value} is not configured on this notifier", permanent=True
            )

    def _headers(self, meta: dict[str, Any]) -> dict[str, str]:
        if self._email_headers is None:
            return {}
        return self._email_headers(meta["user_id"], meta["type"])

    async def _record(
        self,
        partition: int,
        job: str,
        meta: dict[str, Any],
        channel: Medium,
        attempts: int,
        work: dict[str, Any],
        outcome: _Outcome,
    ) -> None:
        now = self._clock()
        reason = outcome.error.reason if outcome.error else None
        next_at: datetime | None = None
        exhausted = False
        if not outcome.remaining:
            state = DeliveryState.SENT if outcome.sent else DeliveryState.FAILED
            if not outcome.sent and isinstance(outcome.error, Suppressed):
                state = DeliveryState.SUPPRESSED
            # Partly sent (one of several push subscriptions gone) is still sent.
        elif attempts >= self._policy.max_attempts:
            state, reason = DeliveryState.FAILED, f"gave up after {attempts} attempts: {reason}"
            exhausted = True
        else:
            state = DeliveryState.RETRYING
            delay = max(0.05, backoff_delay(attempts, self._policy.base, self._policy.cap))
            next_at = now + timedelta(seconds=delay)
        delivery = ChannelDelivery(
            status=state,
            attempts=attempts,
            updated_at=now,
            last_error=reason,
            next_attempt_at=next_at,
        )
        # Unless the step was cancelled (by a `cancel_key`, a read, the user's erasure) while
        # the attempt ran: then it stays `cancelled`, is not tried again, and its job (which an
        # erasure deleted) is not written back; one that went out anyway is recorded `sent`.
        work = {**work, "targets": outcome.remaining}
        record = partial(
            self._recorder.record, partition, job, meta, channel, delivery, now, work=work
        )
        if not await _until_recorded(record, job):
            log.info("delivery_cancelled_in_flight", notification=meta["id"], channel=channel.value)
            return
        self._metrics.deliveries.labels(channel.value, state.value).inc()
        if state is DeliveryState.RETRYING:
            self._metrics.retries.labels(channel.value).inc()
        if exhausted:
            self._metrics.retries_exhausted.labels(channel.value).inc()
        log.info(
            "delivery",
            notification=meta["id"],
            channel=channel.value,
            status=state.value,
            attempts=attempts,
            error=reason,
        )


async def _until_recorded(record: Callable[[], Awaitable[bool]], job: str) -> bool:
    """`record()`, retried: the attempt went out, so an error now (a master restarting, the
    partition's slot migrating to another master) must not leave the job to its lease, whose
    end would send the message again. The record is one script, which ran or did not, and
    finds its own record when it ran before (its reply lost), so a retry is harmless.
    Retried after any error, each logged: besides Redis's and the connection's, redis-py 8's
    Cluster client raises others (AttributeError, RuntimeError) from a connection it closed
    while it (re)learns the slot map, and raising at once sends the message twice (a clean
    run of the slot-migration chaos test mailed one twice when only those were retried). The
    lease is renewed while the job runs (`renew`), so retrying keeps other replicas off it;
    after `RECORD_PATIENCE` the error is raised as before."""
    return await persist(
        record,
        errors=(Exception,),
        patience=RECORD_PATIENCE,
        cap=1.0,
        event="delivery_record_retrying",
        job=job,
    )
