"""Erasing a user (`DELETE /api/users/{user}`): what the notifier holds of a person, gone.

Removed: preferences and contacts, the whole inbox, every other per-user key
(`keys.user_keys`), the user's topic subscriptions (first, found in their set of topics, which
the script then deletes: an erasure cut short is finished by the next), the history of the
user's `user:` channel (it holds the in-app notifications too), the workflow sessions the user
owns, every delivery still to come (held, pending, retrying, waiting to escalate: cancelled,
out of `nt:due`), and the user's throttle logs and open digest windows.
Kept: delivery statuses until they expire, without the user id, addresses or
rendered content, and the hourly analytics counts (type, medium, status: no user in them).
One script, so a delivery claimed meanwhile finds its job gone instead of half an erasure; it
is given every key it touches (read first, again if they changed), as a Cluster needs.
Partitioned (notifier/keys.py), the user's channel history and the workflow sessions live in
other slots: they go right after that script, the sessions one shard at a time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from archmesh_client.channels import history_key, meta_key, user_channel
from archmesh_client.notifications import Medium

from notifier import keys
from shared.lua import lua

REASON = "the user was erased"


class Erasure:
    def __init__(self, redis: aioredis.Redis, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._redis = redis
        self._erase = redis.register_script(lua("notifier.scripts", "erase.lua"))
        self._forget = redis.register_script(lua("notifier.scripts", "forget_sessions.lua"))

    async def erase(self, user_id: str) -> int:
        """Idempotent; the number of deliveries it cancelled (0 the second time)."""
        await self._leave_topics(user_id)
        partition = keys.of_user(user_id)
        body = {
            "user": user_id,
            "prefs": keys.preferences(user_id),
            "index": keys.user_notifications(user_id),
            "due": keys.due(partition),
            "prefix": keys.notification("", partition),
            "timeline": keys.timeline("", partition),
            "sessions": keys.sessions(0) if not keys.layout().tagged else "",
            "media": [medium.value for medium in Medium],
            "delete": keys.user_keys(user_id)
            + ([] if keys.layout().tagged else _channel_keys(user_id)),
            "now": self._clock().isoformat(),
            "reason": REASON,
            "digest_job": keys.DIGEST_JOB,
        }
        payload = orjson.dumps(body)
        while True:  # again if the user's keys changed between the reads and the script
            declared = await self._keys_of(body)
            cancelled = int(await self._erase(keys=declared, args=[payload]))
            if cancelled >= 0:
                break
        if keys.layout().tagged:  # the user's channel and sessions are in other slots
            await self._redis.delete(*_channel_keys(user_id))
            for shard in keys.partitions():
                await self._forget(keys=[keys.sessions(shard)], args=[user_id])
        return cancelled

    async def _keys_of(self, body: dict[str, Any]) -> list[str]:
        """Every key erase.lua touches, found the way it finds them (its partition's due set
        first: it routes the script), so that all are declared."""
        found = [body["due"], body["prefs"], body["index"], *body["delete"]]
        if body["sessions"]:
            found.append(body["sessions"])
        ids = [str(i) for i in await self._redis.zrange(body["index"], 0, -1)]
        if not ids:
            return found
        async with self._redis.pipeline(transaction=False) as pipe:
            for notification_id in ids:
                pipe.hmget(body["prefix"] + notification_id, ["th", "dg"])
            fields: list[list[str | None]] = await pipe.execute()
        windows = []
        for notification_id, (throttle, digest) in zip(ids, fields, strict=True):
            found += [body["prefix"] + notification_id, body["timeline"] + notification_id]
            if throttle:
                found.append(throttle)
            if digest:
                where = orjson.loads(digest)
                window = where["events"].removesuffix(":ev")
                found += [window, where["events"], where["data"]]
                windows.append(window)
        if windows:
            async with self._redis.pipeline(transaction=False) as pipe:
                for window in windows:
                    pipe.hget(window, "pointer")
                pointers: list[str | None] = await pipe.execute()
            found += [pointer for pointer in pointers if pointer]
        return list(dict.fromkeys(found))

    async def _leave_topics(self, user_id: str) -> None:
        """Out of every topic's subscribers, then the user's own set of topics (each topic is
        its own key, in its own slot; the set is removed last, so a retry finds them all).
        The user is marked `erasing` first: a subscribe racing this undoes itself
        (notifier/topics.py says why that covers every order)."""
        await self._redis.set(keys.user_erasing(user_id), "1", ex=keys.ERASING_SECONDS)
        mine = keys.user_topics(user_id)
        topics = await self._redis.smembers(mine)
        for topic in topics:
            await self._redis.zrem(keys.topic_subscribers(str(topic)), user_id)
        await self._redis.delete(mine)


def _channel_keys(user_id: str) -> list[str]:
    """The user channel's history and position (its next publication starts a new epoch, so
    a client that still held an offset in it is told its history is gone)."""
    channel = user_channel(user_id)
    return [history_key(channel), meta_key(channel)]
