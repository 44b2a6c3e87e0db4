"""Topic subscriptions as the API serves them: the client's calls (archmesh_client/topics.py,
the one copy of the layout) plus the notifier's own limit on topics per user."""

from __future__ import annotations

import redis.asyncio as aioredis
from archmesh_client import topics
from archmesh_client.topics import Page

from notifier import keys


class TooManyTopics(Exception):
    """The user already follows the most topics allowed (`notifier_max_topics`)."""


class TopicStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def subscribe(self, user_id: str, topic: str, limit: int) -> bool:
        """True if new. A user at the limit may still re-subscribe to a topic they follow.
        (Checked, then written: two racing calls can pass the limit by one each; it bounds
        what an erasure walks, it is not a quota.)"""
        user_topics = keys.user_topics(user_id)
        if await self._redis.scard(user_topics) >= limit and not await self._redis.sismember(
            user_topics, topic
        ):
            raise TooManyTopics(f"a user may subscribe to at most {limit} topics")
        return await topics.subscribe(self._redis, user_id, topic)

    async def unsubscribe(self, user_id: str, topic: str) -> bool:
        return await topics.unsubscribe(self._redis, user_id, topic)

    async def of_user(self, user_id: str) -> list[str]:
        return await topics.topics_of(self._redis, user_id)

    async def subscribers(self, topic: str, cursor: str | None, limit: int) -> Page:
        return await topics.page(self._redis, topic, cursor, limit)
