"""Delivery status per notification and channel: one hash per notification.

Fields: `meta` (who, what, when, which stream entry), `ch:<channel>` (a ChannelDelivery),
`job:<channel>` (what an external delivery still has to send), `fb:<channel>` (what the provider
reported after accepting it: notifier/feedback_report.py). Every `ch:` write also appends
to the notification's timeline (`keys.timeline`), in the same atomic step."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from archmesh_client.notifications import Medium

from notifier import feedback_report, keys
from notifier.schemas import ChannelDelivery, DeliveryStatus


def fields_of(
    meta: dict[str, Any],
    deliveries: dict[Medium, ChannelDelivery],
    jobs: dict[Medium, dict[str, Any]],
) -> dict[str, str]:
    """The hash of a new notification."""
    fields = {"meta": orjson.dumps(meta).decode()}
    for channel, delivery in deliveries.items():
        fields[f"ch:{channel.value}"] = delivery.model_dump_json()
    for channel, job in jobs.items():
        fields[f"job:{channel.value}"] = orjson.dumps(job).decode()
    return fields


def timeline_entry(medium: str, delivery: ChannelDelivery) -> str:
    """One timeline entry, as commit.lua writes it too: the medium and its delivery then."""
    return f'{{"medium":{orjson.dumps(medium).decode()},"delivery":{delivery.model_dump_json()}}}'


class StatusStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def get(self, notification_id: str) -> DeliveryStatus | None:
        """The id does not say its partition: every partition is asked, in one pipeline."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition in keys.partitions():
                pipe.hgetall(keys.notification(notification_id, partition))
            found: list[dict[str, str]] = await pipe.execute()
        fields = next((f for f in found if "meta" in f), {})
        if "meta" not in fields:
            return None
        meta = orjson.loads(fields["meta"])
        deliveries = {
            Medium(name[3:]): ChannelDelivery.model_validate_json(value)
            for name, value in fields.items()
            if name.startswith("ch:")
        }
        for medium, delivery in deliveries.items():  # a provider's later word, if any
            if report := fields.get(feedback_report.field_of(medium)):
                said = feedback_report.Report.model_validate_json(report)
                deliveries[medium] = feedback_report.shown(delivery, said)
        return DeliveryStatus(
            id=meta["id"],
            user_id=meta["user_id"],
            type=meta["type"],
            priority=meta["priority"],
            created_at=datetime.fromisoformat(meta["created_at"]),
            deliveries=deliveries,
        )

    async def job(
        self, notification_id: str, channel: Medium, partition: int = 0
    ) -> tuple[dict[str, Any], ChannelDelivery, dict[str, Any]] | None:
        """Meta, current delivery and the pending job of one channel (None if expired)."""
        meta, delivery, job = await self._redis.hmget(
            keys.notification(notification_id, partition),
            ["meta", f"ch:{channel.value}", f"job:{channel.value}"],
        )
        if meta is None or delivery is None or job is None:
            return None
        return (
            orjson.loads(meta),
            ChannelDelivery.model_validate_json(delivery),
            orjson.loads(job),
        )
