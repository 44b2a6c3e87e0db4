"""Topic subscriptions as the API serves them: the client's calls (archmesh_client/topics.py,
the one copy of the layout) plus the notifier's own limit on topics per user, checked and
applied in one script, and a subscribe that loses to a racing erasure undone."""

from __future__ import annotations

import redis.asyncio as aioredis
from archmesh_client import topics
from archmesh_client.topics import Page

from notifier import keys
from shared.lua import lua


class TooManyTopics(Exception):
    """The user already follows the most topics allowed (`notifier_max_topics`)."""


class UserErased(Exception):
    """The user is being (or was just) erased: a subscription now would outlive the erasure."""


class TopicStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._add = redis.register_script(lua("notifier.scripts", "topic_subscribe.lua"))

    async def subscribe(self, user_id: str, topic: str, limit: int) -> bool:
        """True if new. A user at the limit may still re-subscribe to a topic they follow;
        the limit is checked and the topic added in one script (racing calls cannot pass it).

        Against an erasure (notifier/erasure.py marks the user `erasing` before it walks their
        topics): the user's side is written first, then the topic's, then the mark is looked
        at; if it is there, both are undone. Either the mark was set before that look (and
        the subscription is undone here), or the look came before the mark, so both writes
        came before the erasure read the user's topics, and it removes them: in every order,
        no subscription outlives the erasure."""
        topics.check(user_id, topic)
        erasing = keys.user_erasing(user_id)
        if await self._redis.exists(erasing):
            raise UserErased(f"user {user_id!r} is being erased")
        user_topics = keys.user_topics(user_id)
        if int(await self._add(keys=[user_topics], args=[topic, limit])) < 0:
            raise TooManyTopics(f"a user may subscribe to at most {limit} topics")
        subscribers = keys.topic_subscribers(topic)
        new = bool(await self._redis.zadd(subscribers, {user_id: 0}))
        if await self._redis.exists(erasing):
            await self._redis.zrem(subscribers, user_id)
            await self._redis.srem(user_topics, topic)
            raise UserErased(f"user {user_id!r} is being erased")
        return new

    async def unsubscribe(self, user_id: str, topic: str) -> bool:
        return await topics.unsubscribe(self._redis, user_id, topic)

    async def of_user(self, user_id: str) -> list[str]:
        return await topics.topics_of(self._redis, user_id)

    async def subscribers(self, topic: str, cursor: str | None, limit: int) -> Page:
        return await topics.page(self._redis, topic, cursor, limit)
