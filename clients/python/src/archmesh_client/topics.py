"""Topic subscriptions: who follows `project:42`, the one copy of their Redis layout and of the
calls that change it. The notifier's API and `NotifierClient` both use these, and the
notifier's fan-out and erasure read the same keys (notifier/keys.py names them).

A topic's subscribers are one sorted set, every score 0, so it is ordered by user id and walked
by cursor (`ZRANGEBYLEX (<last id> +`): a page, or a fan-out batch, never loads the whole topic,
and a user who (un)subscribes meanwhile is simply met or not. Each user also has the set of
their topics, so an erasure finds their subscriptions without scanning every topic.

The two writes are not one transaction (in a Redis Cluster they live in different slots), so
they are ordered to fail safe: subscribing records the user's side first and unsubscribing
removes it last, so the user's set always covers every topic they are in. The user's side is
added by a script (topic_subscribe.lua) that also applies a limit of topics per user, so that
subscribes at once cannot pass it together.

An erasure (the notifier's `DELETE /api/users/{id}`) marks the user `erasing` before it reads
their topics. A subscribe writes both sides, then looks at the mark, and undoes itself if it is
there: either the mark came before that look (and the subscribe undoes itself), or the look
came before the mark, so both writes came before the erasure read the user's topics, and the
erasure removes them. In every order, no subscription outlives the erasure, whether it came
through the notifier's API or straight from a backend's `NotifierClient`."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import redis.asyncio as aioredis

from archmesh_client.notifications import ID_PATTERN, TOPIC_PATTERN

SUBSCRIBE_SOURCE = resources.files(__package__).joinpath("topic_subscribe.lua").read_text()

# How long the erasing mark stays after an erasure began: longer than a subscribe in flight.
ERASING_SECONDS = 300


class TooManyTopics(Exception):
    """The user already follows the most topics allowed."""


class UserErased(Exception):
    """The user is being (or was just) erased: a subscription now would outlive the erasure."""


def topic_key(topic: str) -> str:
    """Every key of one topic shares the hash tag `{topic:<name>}` (one cluster slot)."""
    return "nt:{topic:" + topic + "}"


def subscribers_key(topic: str) -> str:
    """zset user id -> 0: the topic's subscribers, in user id order."""
    return f"{topic_key(topic)}:subs"


def user_topics_key(user_id: str) -> str:
    """set: the topics one user subscribes to (erasure reads it)."""
    return f"nt:user:{user_id}:topics"


def erasing_key(user_id: str) -> str:
    """Set while a user's erasure runs, and `ERASING_SECONDS` after it. Named by the SHA-256 of
    the user id, so that what is left after an erasure does not name the user."""
    return "nt:erasing:" + hashlib.sha256(user_id.encode()).hexdigest()


def check(user_id: str, topic: str) -> None:
    """ValueError unless both are well formed (they become Redis keys)."""
    if not re.match(ID_PATTERN, user_id):
        raise ValueError(f"user id {user_id!r}: 1-128 of A-Z a-z 0-9 . _ @ | + = -")
    if not re.match(TOPIC_PATTERN, topic):
        raise ValueError(f"topic {topic!r}: 1-128 of A-Z a-z 0-9 . _ : @ + = - (no | or braces)")


async def subscribe(
    redis: aioredis.Redis, user_id: str, topic: str, limit: int | None = None
) -> bool:
    """True if the user was not subscribed yet (idempotent). TooManyTopics when the user
    already follows `limit` topics (re-subscribing one of them is allowed); UserErased when an
    erasure of the user is under way or has just ended (see above)."""
    check(user_id, topic)
    erasing = erasing_key(user_id)
    if await redis.exists(erasing):
        raise UserErased(f"user {user_id!r} is being erased")
    user_topics = user_topics_key(user_id)
    add = redis.register_script(SUBSCRIBE_SOURCE)
    if int(await add(keys=[user_topics], args=[topic, -1 if limit is None else limit])) < 0:
        raise TooManyTopics(f"a user may subscribe to at most {limit} topics")
    subscribers = subscribers_key(topic)
    new = bool(await redis.zadd(subscribers, {user_id: 0}))
    if await redis.exists(erasing):
        await redis.zrem(subscribers, user_id)
        await redis.srem(user_topics, topic)
        raise UserErased(f"user {user_id!r} is being erased")
    return new


async def unsubscribe(redis: aioredis.Redis, user_id: str, topic: str) -> bool:
    """True if the user was subscribed (idempotent)."""
    check(user_id, topic)
    removed = bool(await redis.zrem(subscribers_key(topic), user_id))
    await redis.srem(user_topics_key(user_id), topic)
    return removed


async def topics_of(redis: aioredis.Redis, user_id: str) -> list[str]:
    """The user's topics, sorted."""
    found = await redis.smembers(user_topics_key(user_id))
    return sorted(t.decode() if isinstance(t, bytes) else t for t in found)


@dataclass(frozen=True, slots=True)
class Page:
    """Subscribers in user id order; `next_cursor` (the last id) asks for the next page, None
    at the end."""

    users: list[str]
    next_cursor: str | None


async def page(redis: aioredis.Redis, topic: str, cursor: str | None, limit: int) -> Page:
    """Up to `limit` subscribers after `cursor` (None: from the first)."""
    start = "-" if not cursor else f"({cursor}"
    found = await redis.zrangebylex(subscribers_key(topic), start, "+", 0, limit)
    users = [u.decode() if isinstance(u, bytes) else u for u in found]
    return Page(users, users[-1] if len(users) == limit else None)
