"""Escalation, in-app first: a later step (email, push, SMS) is a due job like any other, and
when it comes due this gate decides whether it still goes. Read on any device: it and every
step left are cancelled. Seen, for a step sent `unless seen`: that step is cancelled. Then the
user's preferences and quiet hours as they are now: switched off is suppressed, quiet hours
hold it (and the gate runs again when the hold ends).

Seen and read are the inbox's: read = not in the unread set; seen = read, or not in the unseen
set (`Inbox.marks` once the inbox has it; the keys are the same)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from archmesh_client.notifications import Medium, Priority

from notifier import keys
from notifier.cancellation import Canceller
from notifier.delivery_record import DeliveryRecorder
from notifier.preferences import PreferenceStore
from notifier.quiet_hours import OVERRIDING, quiet_until
from notifier.schemas import ChannelDelivery, DeliveryState, Preferences


@dataclass(frozen=True, slots=True)
class Marks:
    seen: bool
    read: bool


async def marks(redis: aioredis.Redis, user_id: str, item_id: str) -> Marks:
    """Whether the user has seen and read the in-app item (neither, if it is not there).
    The inbox's own `Inbox.marks` reads the same keys (its item id is the notification id)."""
    box = keys.inbox(user_id)
    # Commands whose replies are counts and lists: redis-py's Cluster transactions fail on
    # the boolean reply callbacks (HEXISTS, SISMEMBER).
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hstrlen(box.items, item_id)
        pipe.smismember(box.unread, [item_id])
        pipe.smismember(box.unseen, [item_id])
        exists, [is_unread], [is_unseen] = await pipe.execute()
    if not exists:
        return Marks(seen=False, read=False)
    read = not is_unread
    return Marks(seen=read or not is_unseen, read=read)


class StepGate:
    def __init__(
        self,
        redis: aioredis.Redis,
        preferences: PreferenceStore,
        canceller: Canceller,
        clock: Callable[[], datetime],
        critical: frozenset[str] = frozenset(),
    ) -> None:
        """`critical`: types the user's switches and quiet hours do not apply to."""
        self._critical = critical
        self._redis = redis
        self._preferences = preferences
        self._canceller = canceller
        self._clock = clock
        self._recorder = DeliveryRecorder(redis)

    async def stopped(
        self, partition: int, job: str, meta: dict[str, Any], channel: Medium, work: dict[str, Any]
    ) -> bool:
        """True when the step does not go now (cancelled, suppressed or held: recorded)."""
        now = self._clock()
        nid, user = meta["id"], meta["user_id"]
        found = await marks(self._redis, user, nid)
        if found.read:
            await self._canceller.steps(nid, "read in the app before this step", now, partition)
            return True
        if work.get("unless") == "seen" and found.seen:
            reason = "seen in the app before this step"
            await self._canceller.steps(nid, reason, now, partition, channel)
            return True
        if meta["type"] in self._critical:
            return False
        prefs = await self._preferences.get(user) or Preferences()
        if not prefs.enabled(meta["type"], channel):
            reason = "disabled in the user's preferences"
            await self._record(partition, job, meta, channel, now, DeliveryState.SUPPRESSED, reason)
            return True
        until = None if Priority(meta["priority"]) in OVERRIDING else quiet_until(prefs, now)
        if until is None:
            return False
        if prefs.held == "drop":
            reason = "quiet hours (preference: drop)"
            await self._record(partition, job, meta, channel, now, DeliveryState.SUPPRESSED, reason)
        else:
            held = DeliveryState.HELD
            await self._record(partition, job, meta, channel, now, held, "quiet hours", until)
        return True

    async def _record(
        self,
        partition: int,
        job: str,
        meta: dict[str, Any],
        channel: Medium,
        now: datetime,
        state: DeliveryState,
        reason: str,
        until: datetime | None = None,
    ) -> None:
        delivery = ChannelDelivery(
            status=state, updated_at=now, last_error=reason, next_attempt_at=until
        )
        # Held is not an outcome yet: counted when the step goes (or is stopped) after the hold.
        counted = until is None
        await self._recorder.record(partition, job, meta, channel, delivery, now, counted=counted)
