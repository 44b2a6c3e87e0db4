"""The one producer of the notifiers' intake, and the partitioning it follows.

Requests are split into `partitions` streams, a user always in the same one, so one user's
requests keep their order and a Redis Cluster spreads the work over its masters. Every key of
a partition carries that partition's hash tag, so each notifier script touches one slot.

One Redis with one partition keeps the untagged names of before partitions existed:
`XADD nt:requests * request <NotificationRequest JSON>`. Otherwise a user's partition is
`crc32(user_id) % partitions` and its stream `nt:{<tag>}:requests`, `<tag>` from `tag()`.
Any producer may also queue on the untagged `nt:requests` (or on a wrong partition): a notifier
moves such an entry to its user's partition before processing it, so a producer that does not
know the layout still works, one hop slower."""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from archmesh_client.notifications import REQUEST_FIELD, REQUEST_STREAM, NotificationRequest
from archmesh_client.redis_url import CLUSTER_SCHEMES

UNTAGGED_PREFIX = "nt:"
CLUSTER_PARTITIONS = 8


@cache
def tag(partition: int, partitions: int) -> str:
    """Partition `partition`'s hash tag: the first `ntp<k>.<j>` (j = 0, 1, ...) whose slot falls
    in the k-th of `partitions` equal slot ranges, so the partitions spread evenly over masters
    that hold equal slot ranges (what `redis-cli --cluster create` does)."""
    if not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} of {partitions}")
    j = 0
    while True:
        name = f"ntp{partition}.{j}"
        if key_slot(name.encode()) * partitions // REDIS_CLUSTER_HASH_SLOTS == partition:
            return name
        j += 1


@dataclass(frozen=True, slots=True)
class Partitioning:
    """How the notifiers' keys are laid out (notifier/keys.py builds every key from this)."""

    partitions: int = 1
    tagged: bool = False  # False: one Redis, one partition, the untagged names

    @classmethod
    def of(cls, partitions: int, *, cluster: bool) -> Partitioning:
        """`partitions` 0: the default, 1 on one Redis and `CLUSTER_PARTITIONS` on a Cluster."""
        if partitions < 0:
            raise ValueError("partitions: 0 (the default) or more")
        count = partitions or (CLUSTER_PARTITIONS if cluster else 1)
        return cls(count, tagged=cluster or count > 1)

    def of_user(self, user_id: str) -> int:
        return zlib.crc32(user_id.encode()) % self.partitions

    def prefix(self, partition: int) -> str:
        """The start of every key of `partition`: `nt:{<tag>}:`, or `nt:` untagged."""
        if not self.tagged:
            return UNTAGGED_PREFIX
        return f"nt:{{{tag(partition, self.partitions)}}}:"

    def stream(self, partition: int) -> str:
        return self.prefix(partition) + "requests" if self.tagged else REQUEST_STREAM


UNPARTITIONED = Partitioning()  # one Redis, one partition, the untagged names


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0] in CLUSTER_SCHEMES


async def enqueue(
    redis: Any, requests: Iterable[NotificationRequest], layout: Partitioning = UNPARTITIONED
) -> list[str]:
    """Queue `requests` in one round trip per node, in order, each on its user's partition (a
    topic request on its topic's: the fan-out it starts queues each subscriber's on theirs);
    the stream entries' ids."""
    async with redis.pipeline(transaction=False) as pipe:
        for request in requests:
            stream = layout.stream(layout.of_user(request.user_id or f"topic:{request.topic}"))
            pipe.xadd(stream, {REQUEST_FIELD: request.model_dump_json()})
        replies: list[str | bytes] = await pipe.execute()
    return [reply.decode() if isinstance(reply, bytes) else reply for reply in replies]
