"""Cancelling what is not yet sent: by a request's `cancel_key` (the API), or the rest of one
notification's escalation once its item is read. One script, shared with the Python client
(`archmesh_client.cancellation`), marks the steps `cancelled` with the reason, removes their
due jobs and takes digested events out of their open window, atomically."""

from __future__ import annotations

from datetime import datetime

import redis.asyncio as aioredis
from archmesh_client.cancellation import SOURCE, CancelResult, payload
from archmesh_client.notifications import Medium


class Canceller:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._script = redis.register_script(SOURCE)

    async def by_key(self, cancel_key: str, now: datetime) -> CancelResult:
        args = [payload(now, "cancelled by request", cancel_key=cancel_key)]
        steps, notifications = await self._script(args=args)
        return CancelResult(cancel_key=cancel_key, cancelled=steps, notifications=notifications)

    async def steps(
        self, notification_id: str, reason: str, now: datetime, only: Medium | None = None
    ) -> int:
        """Cancel one notification's open steps (or only its `only` step); how many."""
        args = [payload(now, reason, ids=[notification_id], only=only)]
        steps, _ = await self._script(args=args)
        return int(steps)

    async def after_read(self, notification_ids: list[str], now: datetime) -> int:
        """The escalation steps still waiting for notifications just read: they are not needed
        any more (the step itself would also see the read when it comes due, later)."""
        if not notification_ids:
            return 0
        reason = "read in the app before this step"
        args = [payload(now, reason, ids=notification_ids, states=["waiting"])]
        steps, _ = await self._script(args=args)
        return int(steps)
