"""The two scripts that make a batch of requests cheap and atomic: one call reads what the
batch needs (and locks it), one call records every outcome and acknowledges every entry.

Per-command overhead in the client, not Redis, bounds the notifier's throughput, so a batch
of hundreds of requests costs two round trips instead of a dozen commands per request."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from archmesh_client.notifications import REQUEST_FIELD

from notifier import analytics, keys
from notifier.intake import Entry
from notifier.schemas import InboxItem
from shared.lua import lua


@dataclass(frozen=True, slots=True)
class Found:
    exists: bool
    locked: bool
    preferences: str | None


@dataclass(slots=True)
class Outcome:
    """What one commit records."""

    items: list[dict[str, Any]] = field(default_factory=list)
    acks: list[str] = field(default_factory=list)
    dead_letters: list[list[str]] = field(default_factory=list)
    stats: Counter[tuple[str, str]] = field(default_factory=Counter)

    def record(
        self,
        entry: Entry,
        notification_id: str,
        fields: dict[str, str],
        due: dict[str, int],
        inbox: tuple[str, InboxItem] | None,
    ) -> None:
        item: dict[str, Any] = {
            "key": keys.notification(notification_id),
            "fields": [x for pair in fields.items() for x in pair],
            "due": [x for member, score in due.items() for x in (score, member)],
            "entry": entry.id,
            "lock": keys.lock(notification_id),
            "timeline": keys.timeline(notification_id),
        }
        if inbox is not None:
            user_id, box = inbox
            order, items, unread = keys.inbox(user_id)
            item["inbox"] = {
                "order": order,
                "items": items,
                "unread": unread,
                "id": box.id,
                "score": box.created_at.timestamp(),
                "payload": box.model_dump_json(exclude={"read"}),
            }
        self.items.append(item)

    def dead_letter(self, entry: Entry, reason: str) -> None:
        request = entry.fields.get(REQUEST_FIELD) or repr(entry.fields)[:10000]
        failed_at = str(int(time.time() * 1000))
        self.dead_letters.append([entry.id, request, reason[:4000], failed_at])

    def count(self, moment: datetime, kind: str, channel: str, status: str) -> None:
        self.stats[(keys.stats(analytics.hour_of(moment)), f"{kind}|{channel}|{status}")] += 1

    def __bool__(self) -> bool:
        return bool(self.items or self.acks or self.dead_letters)


class Ledger:
    def __init__(self, redis: aioredis.Redis, retention: float, inbox_size: int) -> None:
        self._retention = int(retention)
        self._inbox_size = inbox_size
        self._prepare = redis.register_script(lua("notifier.scripts", "prepare.lua"))
        self._commit = redis.register_script(lua("notifier.scripts", "commit.lua"))

    async def prepare(
        self, owner: str, lock_seconds: float, requests: list[tuple[str, str]], templates: list[str]
    ) -> tuple[list[Found], dict[str, str | None]]:
        """Per (id, user_id): recorded already? locked by us? the user's preferences JSON."""
        prefixes = [keys.notification(""), keys.lock(""), keys.preferences(""), keys.template("")]
        args: list[Any] = [owner, int(lock_seconds * 1000), len(requests), *prefixes]
        args += [x for pair in requests for x in pair]
        args += templates
        reply = await self._prepare(args=args)
        n = len(requests)
        found = [
            Found(bool(reply[3 * i]), bool(reply[3 * i + 1]), reply[3 * i + 2]) for i in range(n)
        ]
        return found, dict(zip(templates, reply[3 * n :], strict=True))

    async def commit(self, outcome: Outcome) -> list[int]:
        """Record `outcome` atomically; the unread counts of its inbox entries, in order."""
        payload = {
            "stream": keys.REQUESTS,
            "group": keys.GROUP,
            "attempts": keys.ATTEMPTS,
            "dead": keys.DEAD_LETTERS,
            "due": keys.DUE,
            "retention": self._retention,
            "inbox_size": self._inbox_size,
            "stats_ttl": analytics.RETENTION_SECONDS,
            "items": outcome.items,
            "acks": outcome.acks,
            "dead_letters": outcome.dead_letters,
            "stats": [[key, name, n] for (key, name), n in outcome.stats.items()],
        }
        reply = await self._commit(args=[orjson.dumps(payload)])
        return [int(count) for count in reply]
