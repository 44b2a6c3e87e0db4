"""What a notifier announces about itself (shared/announcements.py): the request stream's lag
and pending entries, dead letters, scheduled deliveries, and the counters the announcer turns
into throughput/s. The Redis figures are the ones a scrape reads (Notifier.refresh_gauges);
an unreachable Redis leaves them out rather than failing the announcement."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from notifier import keys
from notifier.intake import Intake
from notifier.metrics import NotifierMetrics
from shared.announcements import Figures

_OUTCOMES = ("accepted", "duplicate", "dead_letter")


class NotifierFigures:
    def __init__(self, redis: aioredis.Redis, intake: Intake, metrics: NotifierMetrics) -> None:
        self._redis = redis
        self._intake = intake
        self._metrics = metrics

    async def __call__(self) -> Figures:
        gauges: dict[str, Any] = {"draining": False}
        try:
            try:
                lag, pending = await self._intake.backlog()
            except ResponseError:  # no request stream yet: nothing queued
                lag, pending = 0, 0
            gauges["queue_lag"], gauges["pending"] = lag, pending
            async with self._redis.pipeline(transaction=False) as pipe:  # one key per call
                for partition in keys.partitions():
                    pipe.xlen(keys.dead_letters(partition))
                    pipe.zcard(keys.due(partition))
                sizes = await pipe.execute()
            gauges["dead_letters"], gauges["scheduled"] = sum(sizes[0::2]), sum(sizes[1::2])
            gauges["redis"] = "connected"
        except Exception:  # the stream may not exist yet, or Redis is away: say so, go on
            gauges["redis"] = "unreachable"
        registry = self._metrics.registry
        processed = sum(
            registry.get_sample_value(
                "archmesh_notifier_requests_processed_total", {"outcome": outcome}
            )
            or 0
            for outcome in _OUTCOMES
        )
        sent = sum(
            registry.get_sample_value(
                "archmesh_notifier_deliveries_total", {"channel": medium, "status": "sent"}
            )
            or 0
            for medium in ("email", "push", "sms", "in_app")
        )
        return Figures(gauges=gauges, counters={"throughput": processed, "sent": sent})
