"""Cancelling what is not yet sent: by a request's `cancel_key` (the API), or the rest of one
notification's escalation once its item is read. One script, shared with the Python client
(`archmesh_client.cancellation`), marks the steps `cancelled` with the reason, removes their
due jobs and takes digested events out of their open window, atomically."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from archmesh_client.cancellation import SOURCE, CancelResult, cancel, payload, run
from archmesh_client.notifications import Medium

from notifier import keys


class Canceller:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._script = redis.register_script(SOURCE)

    async def by_key(self, cancel_key: str, now: datetime) -> CancelResult:
        """Every partition in turn (each one atomically)."""
        return await cancel(self._redis, cancel_key, now, keys.layout())

    async def steps(
        self,
        notification_id: str,
        reason: str,
        now: datetime,
        partition: int = 0,
        only: Medium | None = None,
    ) -> int:
        """Cancel one notification's open steps (or only its `only` step); how many."""
        return await self._run(payload_of(now, reason, [notification_id], partition, only))

    async def after_read(
        self, notification_ids: list[str], now: datetime, user_id: str | None = None
    ) -> int:
        """The escalation steps still waiting for notifications just read (the user's: their
        partition; without a user, partition 0): they are not needed any more (the step
        itself would also see the read when it comes due, later)."""
        if not notification_ids:
            return 0
        reason = "read in the app before this step"
        partition = 0 if user_id is None else keys.of_user(user_id)
        body = payload(
            now,
            reason,
            ids=notification_ids,
            states=["waiting"],
            prefix=keys.prefix(partition),
        )
        return await self._run(body)

    async def _run(self, body: dict[str, Any]) -> int:
        steps, _ = await run(self._redis, body, self._script)
        return steps


def payload_of(
    now: datetime, reason: str, ids: list[str], partition: int, only: Medium | None
) -> dict[str, Any]:
    return payload(now, reason, ids=ids, only=only, prefix=keys.prefix(partition))
