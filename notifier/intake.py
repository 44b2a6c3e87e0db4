"""The durable intake: a Redis Stream read through one consumer group by every replica.

An entry is acknowledged (and deleted) only in the script that records its outcome; a
replica that dies leaves its entries pending, and another reclaims them after `claim_idle`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from archmesh_client.notifications import REQUEST_FIELD, NotificationRequest
from archmesh_client.request_stream import enqueue
from redis.exceptions import ResponseError

from notifier import keys


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    fields: dict[str, str]

    @property
    def request_json(self) -> str:
        return self.fields.get(REQUEST_FIELD, "")


class Intake:
    def __init__(self, redis: aioredis.Redis, consumer: str, claim_idle: float) -> None:
        self._redis = redis
        self.consumer = consumer
        self._claim_idle_ms = int(claim_idle * 1000)
        self._claim_cursor = "0-0"

    async def ensure_group(self) -> None:
        try:
            # From the start: requests queued before the first notifier ran are work too.
            await self._redis.xgroup_create(keys.REQUESTS, keys.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue(self, requests: Iterable[NotificationRequest]) -> list[str]:
        return await enqueue(self._redis, requests)

    async def reclaim(self, count: int) -> list[Entry]:
        """Entries another (dead or stuck) replica left pending for `claim_idle`."""
        reply: Any = await self._redis.xautoclaim(
            keys.REQUESTS,
            keys.GROUP,
            self.consumer,
            self._claim_idle_ms,
            start_id=self._claim_cursor,
            count=count,
        )
        self._claim_cursor = reply[0]
        return [Entry(entry_id, fields) for entry_id, fields in reply[1] if fields is not None]

    async def read(self, count: int, block_ms: int) -> list[Entry]:
        reply: Any = await self._redis.xreadgroup(
            keys.GROUP, self.consumer, {keys.REQUESTS: ">"}, count=count, block=block_ms
        )
        if not reply:
            return []
        return [Entry(entry_id, fields) for entry_id, fields in reply[0][1]]

    async def note_failure(self, entry: Entry) -> int:
        """Count a failed processing attempt; the count decides when to dead-letter."""
        return int(await self._redis.hincrby(keys.ATTEMPTS, entry.id, 1))

    async def backlog(self) -> tuple[int, int]:
        """(entries not yet read by the group, entries read but not acknowledged)."""
        for group in await self._redis.xinfo_groups(keys.REQUESTS):
            if group["name"] == keys.GROUP:
                return int(group.get("lag") or 0), int(group["pending"])
        return 0, 0
