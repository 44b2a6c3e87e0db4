"""Recording one step's outcome (record_delivery.lua): a send's result, or a step that the
escalation gate stopped (suppressed, held for quiet hours). One script whose every key is
declared, in the notification's partition: it ran whole or not at all, also while the
partition's slot migrates between Cluster masters (a MULTI there could write half of it on
each master), and a cancel that came meanwhile keeps the step cancelled."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from archmesh_client.notifications import Medium

from notifier import analytics, keys, status
from notifier.schemas import ChannelDelivery, DeliveryState
from shared.lua import lua


class DeliveryRecorder:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._script = redis.register_script(lua("notifier.scripts", "record_delivery.lua"))

    async def record(
        self,
        partition: int,
        job: str,
        meta: dict[str, Any],
        channel: Medium,
        delivery: ChannelDelivery,
        now: datetime,
        *,
        work: dict[str, Any] | None = None,
        counted: bool = True,
    ) -> bool:
        """Write `delivery` and the job's next due time (none: the job is done) unless the step
        was cancelled meanwhile; `work`: the job's addresses and content for its next attempt
        (kept as they are when None); `counted`: in the hour's analytics. False when the cancel
        kept the step (one sent anyway is still recorded `sent`)."""
        again = delivery.next_attempt_at
        kind = meta["type"]
        recorded = await self._script(
            keys=[
                keys.notification(meta["id"], partition),
                keys.timeline(meta["id"], partition),
                keys.due(partition),
                keys.stats(analytics.hour_of(now), partition),
            ],
            args=[
                channel.value,
                delivery.model_dump_json(),
                status.timeline_entry(channel.value, delivery),
                "" if work is None else orjson.dumps(work),
                job,
                "" if again is None else int(again.timestamp() * 1000),
                analytics.field(kind, channel.value, delivery.status.value) if counted else "",
                analytics.field(kind, channel.value, DeliveryState.SENT.value),
                analytics.RETENTION_SECONDS,
            ],
        )
        return bool(recorded)
