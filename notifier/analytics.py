"""Delivery counts by type, channel and status in hourly buckets."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis

from notifier import keys

RETENTION_SECONDS = 90 * 86400
MAX_RANGE = timedelta(days=93)


def hour_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H")


def field(kind: str, channel: str, status: str, reason: str | None = None) -> str:
    """A bucket's field: type|channel|status, and |reason for the few counted apart (throttled)."""
    return f"{kind}|{channel}|{status}" + (f"|{reason}" if reason else "")


class Analytics:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def query(
        self,
        start: datetime,
        end: datetime,
        kind: str | None = None,
        channel: str | None = None,
    ) -> list[dict[str, Any]]:
        """Buckets whose hour starts in [start, end), oldest first, zero counts left out."""
        first = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        if start.astimezone(UTC) > first:
            first += timedelta(hours=1)
        hours = []
        moment = first
        while moment < end:
            hours.append(moment)
            moment += timedelta(hours=1)
        parts = keys.partitions()
        async with self._redis.pipeline(transaction=False) as pipe:
            for hour in hours:
                for partition in parts:
                    pipe.hgetall(keys.stats(hour_of(hour), partition))
            replies = await pipe.execute()
        results: list[Counter[str]] = []
        for index in range(len(hours)):  # each hour summed over the partitions
            summed: Counter[str] = Counter()
            for counts in replies[index * len(parts) : (index + 1) * len(parts)]:
                summed.update({name: int(value) for name, value in counts.items()})
            results.append(summed)
        buckets = []
        for hour, counts in zip(hours, results, strict=True):
            for name, value in sorted(counts.items()):
                kind_, channel_, status, *reason = name.split("|")
                if (kind and kind_ != kind) or (channel and channel_ != channel):
                    continue
                bucket = {
                    "hour": hour.isoformat(),
                    "type": kind_,
                    "channel": channel_,
                    "status": status,
                    "count": int(value),
                }
                if reason:
                    bucket["reason"] = reason[0]
                buckets.append(bucket)
        return buckets
