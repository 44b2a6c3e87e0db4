"""Send notifications from a Python backend: validated here, queued on the notifiers' stream.

async with NotifierClient("redis://localhost:6379/0") as notifier:
    await notifier.send({"user_id": "u1", "type": "workflow_failed", "title": "It failed"})
    await notifier.subscribe("u1", "project:42")
    await notifier.send({"topic": "project:42", "exclude": ["u2"], "type": "comment_added",
                         "title": "New comment"})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError

from archmesh_client.cancellation import CancelResult, cancel
from archmesh_client.cluster_client import cluster_client
from archmesh_client.notifications import (
    BatchResult,
    ItemResult,
    NotificationRequest,
    validation_error,
)
from archmesh_client.redis_url import ClusterAddress
from archmesh_client.request_stream import Partitioning, enqueue, is_cluster_url
from archmesh_client.topics import Page, page, subscribe, topics_of, unsubscribe

Item = NotificationRequest | Mapping[str, Any]


def _request(item: Item) -> NotificationRequest:
    if isinstance(item, NotificationRequest):
        return item
    return NotificationRequest.model_validate(item)


class NotifierClient:
    def __init__(self, redis_url: str, partitions: int = 0) -> None:
        """`redis_url`: the notifiers' Redis (`redis+cluster://...` for a Cluster);
        `partitions`: the notifiers' `ARCHMESH_NOTIFIER_PARTITIONS` (0, the default, means the
        same as there: 1 on one Redis, 8 on a Cluster)."""
        self._redis: Any
        cluster = is_cluster_url(redis_url)
        if cluster:
            self._redis = cluster_client(ClusterAddress.parse(redis_url), socket_connect_timeout=5)
        else:
            self._redis = aioredis.Redis.from_url(redis_url, socket_connect_timeout=5)
        self._layout = Partitioning.of(partitions, cluster=cluster)

    async def send(self, item: Item) -> str:
        """Queue one notification; returns its id. Raises pydantic's ValidationError."""
        request = _request(item)
        await enqueue(self._redis, [request], self._layout)
        return request.id

    async def send_batch(self, items: Sequence[Item]) -> BatchResult:
        """Queue the valid items in one round trip; each item gets its own result."""
        results: list[ItemResult] = []
        valid: list[NotificationRequest] = []
        for index, item in enumerate(items):
            try:
                request = _request(item)
            except ValidationError as exc:
                results.append(ItemResult(index=index, ok=False, error=validation_error(exc)))
            else:
                valid.append(request)
                results.append(ItemResult(index=index, ok=True, id=request.id))
        if valid:
            await enqueue(self._redis, valid, self._layout)
        return BatchResult.of(results)

    async def cancel(self, cancel_key: str) -> CancelResult:
        """Cancel every step not yet sent (held in quiet hours, waiting to escalate, collected
        in an open digest) of the notifications that carried `cancel_key`."""
        return await cancel(self._redis, cancel_key, layout=self._layout)

    async def subscribe(self, user_id: str, topic: str) -> bool:
        """Subscribe the user to `topic` (a request to the topic reaches them); True if new."""
        return await subscribe(self._redis, user_id, topic)

    async def unsubscribe(self, user_id: str, topic: str) -> bool:
        """True if the user was subscribed."""
        return await unsubscribe(self._redis, user_id, topic)

    async def topics(self, user_id: str) -> list[str]:
        """The topics the user subscribes to."""
        return await topics_of(self._redis, user_id)

    async def subscribers(self, topic: str, cursor: str | None = None, limit: int = 500) -> Page:
        """A page of the topic's subscribers (pass `next_cursor` back for the next one)."""
        return await page(self._redis, topic, cursor, limit)

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def __aenter__(self) -> NotifierClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
