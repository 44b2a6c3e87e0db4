"""Each user's in-app inbox: newest first, bounded, with an unread set for the badge.

Items are added by the ledger's commit script, in the same step that records the delivery."""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from notifier import keys
from notifier.schemas import InboxItem


class Inbox:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def list(self, user_id: str, limit: int = 50) -> tuple[list[InboxItem], int]:
        order, items_key, unread_key = keys.inbox(user_id)
        ids: list[str] = await self._redis.zrevrange(order, 0, limit - 1)  # type: ignore[assignment]
        unread: set[str] = await self._redis.smembers(unread_key)  # type: ignore[assignment]
        raws: list[str | None] = await self._redis.hmget(items_key, ids) if ids else []  # type: ignore[assignment]
        items = []
        for raw in raws:
            if raw is None:
                continue
            fields: dict[str, Any] = orjson.loads(raw)
            items.append(InboxItem.model_validate({**fields, "read": fields["id"] not in unread}))
        return items, len(unread)

    async def mark_read(self, user_id: str, notification_id: str) -> tuple[bool, int]:
        """Whether the item exists, and the unread count after."""
        order, _, unread_key = keys.inbox(user_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zscore(order, notification_id)
            pipe.srem(unread_key, notification_id)
            pipe.scard(unread_key)
            score, _, count = await pipe.execute()
        return score is not None, int(count)

    async def mark_all_read(self, user_id: str) -> int:
        await self._redis.delete(keys.inbox(user_id)[2])
        return 0
