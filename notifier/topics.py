"""Topic subscriptions as the API serves them: the client's calls (archmesh_client/topics.py,
the one copy of the layout, the per-user limit and the erasure guard) with the notifier's
limit (`notifier_max_topics`)."""

from __future__ import annotations

import redis.asyncio as aioredis
from archmesh_client import topics
from archmesh_client.topics import Page, TooManyTopics, UserErased

__all__ = ["Page", "TooManyTopics", "TopicStore", "UserErased"]


class TopicStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def subscribe(self, user_id: str, topic: str, limit: int) -> bool:
        """True if new; TooManyTopics past `limit`, UserErased against an erasure (both
        decided by archmesh_client.topics.subscribe, the one copy of the call)."""
        return await topics.subscribe(self._redis, user_id, topic, limit)

    async def unsubscribe(self, user_id: str, topic: str) -> bool:
        return await topics.unsubscribe(self._redis, user_id, topic)

    async def of_user(self, user_id: str) -> list[str]:
        return await topics.topics_of(self._redis, user_id)

    async def subscribers(self, topic: str, cursor: str | None, limit: int) -> Page:
        return await topics.page(self._redis, topic, cursor, limit)
