"""The durable intake: one Redis Stream per partition, each read through its consumer group.

An entry is acknowledged (and deleted) only in the script that records its outcome; a
replica that dies leaves its entries pending, and another reclaims them after `claim_idle`
(or at once, when it takes the partition's lease over: notifier/ownership.py).

An entry on the wrong partition (a producer that does not know the layout, or the untagged
`nt:requests` of a deployment that was not partitioned before) is moved to its user's
partition first: added there, then acknowledged here. A crash between the two leaves it on
both, and the request's id makes the second one a duplicate, acknowledged without effect."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from archmesh_client.notifications import REQUEST_FIELD, REQUEST_STREAM, NotificationRequest
from archmesh_client.request_stream import enqueue
from redis.exceptions import ResponseError

from notifier import keys


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    fields: dict[str, str]
    partition: int = 0

    @property
    def request_json(self) -> str:
        return self.fields.get(REQUEST_FIELD, "")

    def home(self) -> int | None:
        """The partition this entry's user belongs to (None: no readable user id; such an
        entry is dead-lettered where it is)."""
        try:
            user = orjson.loads(self.request_json).get("user_id")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return keys.of_user(user) if isinstance(user, str) else None


LEGACY = -1  # the untagged `nt:requests` of a partitioned layout: drained into the partitions


def stream_of(partition: int) -> str:
    return REQUEST_STREAM if partition == LEGACY else keys.requests(partition)


class Intake:
    def __init__(self, redis: Any, consumer: str, claim_idle: float) -> None:
        self._redis = redis
        self.consumer = consumer
        self._claim_idle_ms = int(claim_idle * 1000)
        self._claim_cursor: dict[int, str] = {}

    async def ensure_group(self, partition: int = 0) -> None:
        try:
            # From the start: requests queued before the first notifier ran are work too.
            await self._redis.xgroup_create(stream_of(partition), keys.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue(self, requests: Iterable[NotificationRequest]) -> list[str]:
        """Each request on its user's partition."""
        return await enqueue(self._redis, requests, keys.layout())

    async def reclaim(self, count: int, partition: int = 0, *, idle: bool = True) -> list[Entry]:
        """Entries another (dead or stuck) replica left pending for `claim_idle` (or however
        long, with `idle=False`: the partition's previous holder is gone)."""
        reply: Any = await self._redis.xautoclaim(
            stream_of(partition),
            keys.GROUP,
            self.consumer,
            self._claim_idle_ms if idle else 0,
            start_id=self._claim_cursor.get(partition, "0-0"),
            count=count,
        )
        self._claim_cursor[partition] = reply[0]
        return [
            Entry(entry_id, fields, partition)
            for entry_id, fields in reply[1]
            if fields is not None
        ]

    async def read(self, count: int, block_ms: int | None, partition: int = 0) -> list[Entry]:
        """`block_ms`: how long to wait for an entry when there is none (None: not at all)."""
        reply: Any = await self._redis.xreadgroup(
            keys.GROUP, self.consumer, {stream_of(partition): ">"}, count=count, block=block_ms
        )
        if not reply:
            return []
        return [Entry(entry_id, fields, partition) for entry_id, fields in reply[0][1]]

    async def forward(self, entries: list[Entry]) -> None:
        """Move entries of other partitions' users to their own partition (see above)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry in entries:
                home = entry.home()  # None (unreadable): dead-lettered in partition 0
                pipe.xadd(keys.requests(0 if home is None else home), entry.fields)
            await pipe.execute()
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.xack(stream_of(entry.partition), keys.GROUP, entry.id)
                pipe.xdel(stream_of(entry.partition), entry.id)
            await pipe.execute()

    async def note_failure(self, entry: Entry) -> int:
        """Count a failed processing attempt; the count decides when to dead-letter."""
        return int(await self._redis.hincrby(keys.attempts(entry.partition), entry.id, 1))

    async def backlog(self) -> tuple[int, int]:
        """(entries not yet read by the groups, entries read but not acknowledged), summed."""
        lag = pending = 0
        for partition in keys.partitions():
            try:
                groups = await self._redis.xinfo_groups(keys.requests(partition))
            except ResponseError:  # no such stream yet
                continue
            for group in groups:
                if group["name"] == keys.GROUP:
                    lag += int(group.get("lag") or 0)
                    pending += int(group["pending"])
        return lag, pending
