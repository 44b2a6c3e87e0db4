"""The one producer of the notifiers' intake: `XADD nt:requests * request <NotificationRequest
JSON>`, as documented for other languages. The notifier client and the notifier's own API both
queue through it, so the entry layout is written once."""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis

from archmesh_client.notifications import REQUEST_FIELD, REQUEST_STREAM, NotificationRequest


async def enqueue(redis: aioredis.Redis, requests: Iterable[NotificationRequest]) -> list[str]:
    """Queue `requests` in one round trip, in order; the stream entries' ids."""
    async with redis.pipeline(transaction=False) as pipe:
        for request in requests:
            pipe.xadd(REQUEST_STREAM, {REQUEST_FIELD: request.model_dump_json()})
        replies: list[str | bytes] = await pipe.execute()
    return [reply.decode() if isinstance(reply, bytes) else reply for reply in replies]
