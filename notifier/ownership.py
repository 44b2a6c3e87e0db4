"""Which partitions this replica works on: no coordinator of our own, only leases in Redis.

Untagged (one Redis, one partition) every replica reads the one stream through the consumer
group and watches every session, as before partitions existed (`Everything`).

Partitioned, a partition is held by one replica at a time (`Leases`): it reads the partition's
stream (so one user's requests are processed in order) and watches the workflow sessions of
the partition's shard. Every replica heartbeats in `nt:{nt}:replicas`; each holds at most its
fair share, ceil(partitions / live replicas), releasing extras (a replica joined) and taking
free partitions (one left or died). A lease lasts `claim_idle` and is renewed a few times per
lease, so a replica that dies gives its partitions back within the claim time (plus one tick);
one that stops gives them back at once. Two holders for a moment (a replica paused past its
lease) are harmless: a request is locked while processed and recorded once by its id, and a
workflow event is enqueued once by its marker (notifier/workflow.py)."""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable
from typing import Any, Protocol

from notifier import keys
from shared.logging import get_logger
from shared.lua import lua

log = get_logger(__name__)


Busy = Callable[[int], bool]  # whether this replica is still working on a partition


class Ownership(Protocol):
    partitioned: bool

    def owned(self) -> frozenset[int]: ...

    async def tick(self, busy: Busy) -> None: ...

    async def release_all(self) -> None: ...


class Everything:
    """Untagged: every replica works on every (the one) partition."""

    partitioned = False

    def owned(self) -> frozenset[int]:
        return frozenset(keys.partitions())

    async def tick(self, busy: Busy) -> None:
        return None

    async def release_all(self) -> None:
        return None


class Leases:
    partitioned = True

    def __init__(self, redis: Any, node: str, lease: float) -> None:
        self._redis = redis
        self._node = node
        self._lease_ms = int(lease * 1000)
        self._held: set[int] = set()
        self._releasing: set[int] = set()  # still held, no longer worked on: given up when idle
        self._script = redis.register_script(lua("notifier.scripts", "lease.lua"))
        count = keys.layout().partitions
        start = zlib.crc32(node.encode()) % count  # replicas try partitions in different orders
        self._order = [(start + k) % count for k in range(count)]

    def owned(self) -> frozenset[int]:
        return frozenset(self._held - self._releasing)

    async def tick(self, busy: Busy) -> None:
        """Heartbeat, renew, then release extras or take free partitions up to the fair share.

        An extra partition is first no longer owned (its reader stops after its batch), and its
        lease is released once `busy` says the reader is done: the next holder never processes
        a user's later request while this one still records an earlier one."""
        now = await self._now_ms()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.REPLICAS, {self._node: now + self._lease_ms})
            pipe.zremrangebyscore(keys.REPLICAS, "-inf", now)
            pipe.zcard(keys.REPLICAS)
            *_, alive = await pipe.execute()
        fair = math.ceil(len(self._order) / max(1, int(alive)))
        for partition in sorted(self._held):
            if not await self._call(partition, "renew"):
                self._held.discard(partition)
                self._releasing.discard(partition)
                log.warning("partition_lost", partition=partition)
        for partition in sorted(self._releasing):
            if not busy(partition):
                await self._call(partition, "release")
                self._held.discard(partition)
                self._releasing.discard(partition)
                log.info("partition_released", partition=partition)
        for partition in reversed(self._order):
            if len(self._held - self._releasing) <= fair:
                break
            if partition in self._held:
                self._releasing.add(partition)
        for partition in self._order:
            if len(self._held) >= fair:
                break
            if partition not in self._held and await self._redis.set(
                keys.lease(partition), self._node, nx=True, px=self._lease_ms
            ):
                self._held.add(partition)
                log.info("partition_taken", partition=partition)

    async def release_all(self) -> None:
        for partition in sorted(self._held):
            await self._call(partition, "release")
        self._held.clear()
        self._releasing.clear()
        await self._redis.zrem(keys.REPLICAS, self._node)

    async def _call(self, partition: int, op: str) -> bool:
        lease = keys.lease(partition)
        return bool(await self._script(keys=[lease], args=[self._node, self._lease_ms, op]))

    async def _now_ms(self) -> int:
        """The replicas' own clocks: a heartbeat is counted a few seconds off at worst, which
        only delays a rebalance (the leases themselves expire by Redis's clock)."""
        return int(time.time() * 1000)
