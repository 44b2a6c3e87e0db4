"""Each user's in-app inbox: newest first, bounded, each item seen, read and archived or not.

Items are added by the ledger's commit script, in the same step that records the delivery.
The marks are three sets beside the items (unseen, unread, archived; read implies seen and
archived implies read), so the `unseen` and `unread` counts are two set sizes, changed and
published in one script (notifier/live.py says why): they never drift from the store and
never go below zero, however many clients mark at once."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
import redis.asyncio as aioredis
from archmesh_client.channels import user_channel

from notifier import keys
from notifier.events import inbox_event
from notifier.live import LiveChannels, with_publish
from notifier.schemas import InboxCounts, InboxItem, InboxPage, ItemMarks
from shared.broker import Broker, BrokerError
from shared.logging import get_logger
from shared.lua import lua

log = get_logger(__name__)

_SCORE = re.compile(r"^-?[0-9]+(\.[0-9]+)?(e[-+]?[0-9]+)?$")


class Mark(StrEnum):
    SEEN = "seen"
    READ = "read"
    ARCHIVE = "archive"
    UNARCHIVE = "unarchive"


class BadCursor(ValueError):
    """A cursor this inbox did not hand out."""


@dataclass(frozen=True, slots=True)
class Marked:
    counts: InboxCounts
    unknown: list[str]  # the given ids that are not in the inbox


@dataclass(frozen=True, slots=True)
class Filter:
    """`archived`: True, False, or None for both; `types`: empty for every type."""

    archived: bool | None = False
    types: frozenset[str] = frozenset()


class Inbox:
    def __init__(self, redis: aioredis.Redis, broker: Broker, live: LiveChannels | None) -> None:
        """With `live`, the mark script publishes the counts itself (store and broker share a
        Redis); without, they are published right after, under one lock (one process)."""
        self._redis = redis
        self._broker = broker
        self._live = live
        self._lock = asyncio.Lock()
        source = lua("notifier.scripts", "inbox_mark.lua")
        self._mark = redis.register_script(with_publish(source) if live else source)

    # -- marks ---------------------------------------------------------------------------------

    async def marks(self, user_id: str, item_id: str) -> ItemMarks | None:
        """Where one item stands; None if it is not (or no longer) in the inbox."""
        box = keys.inbox(user_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zscore(box.order, item_id)
            # Lists, not SISMEMBER: redis-py's Cluster transactions fail on boolean replies.
            pipe.smismember(box.unseen, [item_id])
            pipe.smismember(box.unread, [item_id])
            pipe.smismember(box.archived, [item_id])
            score, [unseen], [unread], [archived] = await pipe.execute()
        if score is None:
            return None
        return ItemMarks(seen=not unseen, read=not unread, archived=bool(archived))

    async def unread(self, user_id: str) -> list[str]:
        """The ids not read yet."""
        members = await self._redis.smembers(keys.inbox(user_id).unread)
        return sorted(str(member) for member in members)

    async def item(self, user_id: str, item_id: str) -> InboxItem | None:
        """One item with its marks, archived or not."""
        box = keys.inbox(user_id)
        score: float | None = await self._redis.zscore(box.order, item_id)
        if score is None:
            return None
        found = await self._items(box, [(item_id, str(score))], Filter(archived=None))
        return found[0][0] if found else None

    async def counts(self, user_id: str) -> InboxCounts:
        box = keys.inbox(user_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.scard(box.unseen)
            pipe.scard(box.unread)
            unseen, unread = await pipe.execute()
        return InboxCounts(unseen=unseen, unread=unread)

    async def mark(
        self, user_id: str, mark: Mark, ids: Sequence[str] = (), *, every: bool = False
    ) -> Marked:
        """Mark `ids` (or every item): the counts after, and which ids were not found."""
        box = keys.inbox(user_id)
        script_keys: list[str] = list(box)
        size, ttl = 0, 0
        if self._live is not None:
            script_keys += self._live.keys(user_id)
            size, ttl = self._live.retention(user_id)
        args: list[Any] = [mark.value, "1" if every else "0", size, ttl, *([] if every else ids)]
        if self._live is not None:
            reply = await self._mark(keys=script_keys, args=args)
        else:
            async with self._lock:
                reply = await self._mark(keys=script_keys, args=args)
                if reply[2] == 1:
                    await self._publish(user_id, int(reply[0]), int(reply[1]))
        unseen, unread, _, *found = reply
        unknown = [item for item, hit in zip(ids, found, strict=False) if not hit]
        return Marked(InboxCounts(unseen=int(unseen), unread=int(unread)), unknown)

    async def _publish(self, user_id: str, unseen: int, unread: int) -> None:
        event = orjson.dumps(inbox_event(unseen, unread)).decode()
        try:
            await self._broker.publish(user_channel(user_id), event)
        except BrokerError as exc:  # the counts are right in the store regardless
            log.warning("inbox_push_failed", user=user_id, error=str(exc))

    # -- listing -------------------------------------------------------------------------------

    async def page(
        self, user_id: str, limit: int, cursor: str | None = None, where: Filter = Filter()
    ) -> InboxPage:
        """Newest first, after `cursor`. The cursor is the last item's place (its time and id),
        so items that arrive meanwhile (newer) never shift a page, and none repeats."""
        box = keys.inbox(user_id)
        top, after = ("+inf", None) if cursor is None else _decode(cursor)
        counts = await self.counts(user_id)
        found = await self._scan(box, top, after, limit + 1, where)
        items = [item for item, _ in found[:limit]]
        more = len(found) > limit
        next_cursor = _encode(found[limit - 1][1], items[-1].id) if more else None
        return InboxPage(items=items, next_cursor=next_cursor, **counts.model_dump())

    async def _scan(
        self, box: keys.InboxKeys, top: str, after: str | None, want: int, where: Filter
    ) -> list[tuple[InboxItem, str]]:
        """At least `want` items that pass `where` (fewer at the end), each with its score,
        older than (top, after): equal times are ordered by id, as Redis orders them."""
        found: list[tuple[InboxItem, str]] = []
        chunk = max(want, 100)
        while len(found) < want:
            rows: list[tuple[str, str]] = await self._redis.zrevrangebyscore(
                box.order, top, "-inf", 0, chunk, withscores=True, score_cast_func=_score_text
            )  # type: ignore[assignment]
            full = len(rows) == chunk
            if after is not None:
                rows = [(i, s) for i, s in rows if s != top or i < after]
            if rows:
                found += await self._items(box, rows, where)
                after, top = rows[-1]
            if not full:
                break
            if not rows:
                chunk *= 2  # a whole chunk of equal times already passed: look further
        return found

    async def _items(
        self, box: keys.InboxKeys, rows: list[tuple[str, str]], where: Filter
    ) -> list[tuple[InboxItem, str]]:
        if not rows:
            return []
        ids = [item_id for item_id, _ in rows]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hmget(box.items, ids)
            pipe.smismember(box.unseen, ids)
            pipe.smismember(box.unread, ids)
            pipe.smismember(box.archived, ids)
            raws, unseen, unread, archived = await pipe.execute()
        out: list[tuple[InboxItem, str]] = []
        for (_, score), raw, a, b, c in zip(rows, raws, unseen, unread, archived, strict=True):
            if raw is None:
                continue  # dropped from the inbox meanwhile
            if where.archived is not None and bool(c) != where.archived:
                continue
            fields: dict[str, Any] = orjson.loads(raw)
            if where.types and fields.get("type") not in where.types:
                continue
            marks = {"seen": not a, "read": not b, "archived": bool(c)}
            out.append((InboxItem.model_validate({**fields, **marks}), score))
        return out


def _score_text(raw: bytes | str | float) -> str:
    """A score as Redis wrote it (redis-py hands scores over undecoded): compared as text, so
    a cursor's time matches its item's exactly."""
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _encode(score: str, item_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([score, item_id])).decode().rstrip("=")


def _decode(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        score, item_id = orjson.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise BadCursor("cursor: not one this inbox gave") from None
    if not isinstance(score, str) or not isinstance(item_id, str) or not _SCORE.match(score):
        raise BadCursor("cursor: not one this inbox gave")
    return score, item_id
