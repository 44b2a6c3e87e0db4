"""Steady traffic and its accounting: SDK clients that count what they receive, a publisher
that numbers what it sends, and the tally that compares the two.

Every published event is {"type": "chaos", "n": <sequence>, "t": <publish wall time>}, so a
receiver can tell lost, duplicated and out-of-order events apart by `n` alone, and measure the
publish-to-delivery latency from `t` (one machine, one clock)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from archmesh_client.publisher import Publisher, connect_publisher
from archmesh_client.realtime import Publication, RealtimeClient, RecoveryFailed, StateChange
from archmesh_client.redis_transport import PublishError
from archmesh_client.retention import HistoryPolicy, Retention
from redis.exceptions import RedisError


@dataclass
class Receiver:
    """One SDK client and everything it saw, with arrival times."""

    name: str
    client: RealtimeClient = field(init=False)
    received: list[int] = field(default_factory=list)
    arrived: dict[int, float] = field(default_factory=dict)  # first arrival per n
    latencies: list[float] = field(default_factory=list)
    failures: list[RecoveryFailed] = field(default_factory=list)
    states: list[tuple[float, StateChange]] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)  # every node it was connected to
    task: asyncio.Task[None] | None = None

    def on_state(self, change: StateChange) -> None:
        self.states.append((time.monotonic(), change))
        info = self.client.info
        if change.state.value == "connected" and info is not None:
            self.nodes.append(info.node)

    def record(self, data: dict[str, Any]) -> None:
        n = data.get("n")
        if not isinstance(n, int):
            return
        now = time.monotonic()
        self.received.append(n)
        self.arrived.setdefault(n, now)
        sent = data.get("t")
        if isinstance(sent, float):
            self.latencies.append(time.time() - sent)

    def disconnects(self) -> list[tuple[float, int | None, str | None]]:
        """(time, close code, reason) of every reconnect the client went through."""
        return [
            (at, change.code, change.reason)
            for at, change in self.states
            if change.state.value == "reconnecting" and change.attempt == 1
        ]


@dataclass(frozen=True)
class Tally:
    """Deliveries compared with what was published, summed over receivers."""

    published: int
    receivers: int
    delivered: int
    lost: int
    duplicated: int
    out_of_order: int
    recovery_failures: int

    @property
    def expected(self) -> int:
        return self.published * self.receivers


class Audience:
    """`size` SDK clients on `url`, each subscribed to `channel`."""

    def __init__(
        self,
        url: str,
        token_for: Callable[[str], str],
        channel: str,
        size: int,
        **client_options: Any,
    ) -> None:
        self.url = url
        self.channel = channel
        self.receivers = []
        for i in range(size):
            receiver = Receiver(f"r{i}")
            receiver.client = RealtimeClient(
                url, token_for(receiver.name), on_state=receiver.on_state, **client_options
            )
            self.receivers.append(receiver)

    async def start(self) -> None:
        await asyncio.gather(*(self._start(r) for r in self.receivers))

    async def _start(self, receiver: Receiver) -> None:
        await receiver.client.connect()
        await receiver.client.subscribe(self.channel)
        receiver.task = asyncio.create_task(self._consume(receiver))

    async def _consume(self, receiver: Receiver) -> None:
        async for item in receiver.client.publications():
            if isinstance(item, RecoveryFailed):
                receiver.failures.append(item)
            elif isinstance(item, Publication) and item.channel == self.channel:
                receiver.record(item.data)

    def have_all(self, total: int) -> bool:
        return all(len(r.arrived) >= total and total - 1 in r.arrived for r in self.receivers)

    async def wait_for(self, total: int, within: float) -> bool:
        """Whether every receiver got events 0..total-1 within `within` seconds."""
        deadline = time.monotonic() + within
        while not self.have_all(total):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def tally(self, published: int) -> Tally:
        delivered = lost = duplicated = disorder = failures = 0
        for receiver in self.receivers:
            seen = receiver.received
            delivered += len(seen)
            distinct = set(seen)
            lost += sum(1 for n in range(published) if n not in distinct)
            duplicated += len(seen) - len(distinct)
            disorder += sum(1 for a, b in itertools.pairwise(seen) if b < a)
            failures += len(receiver.failures)
        return Tally(
            published, len(self.receivers), delivered, lost, duplicated, disorder, failures
        )

    def recovered_after(
        self, publisher: SteadyPublisher, since: float, healed: float | None = None
    ) -> float | None:
        """Seconds from `since` until every receiver had the first event published after the
        fault was over (at `healed`, default `since`); in-order delivery means everything
        before it too. None if a receiver never got it."""
        first = publisher.first_published_after(healed if healed is not None else since)
        if first is None:
            return None
        times = [r.arrived.get(first) for r in self.receivers]
        if any(t is None for t in times):
            return None
        return max(t for t in times if t is not None) - since

    async def close(self) -> None:
        await asyncio.gather(*(r.client.close() for r in self.receivers))
        for receiver in self.receivers:
            if receiver.task is not None:
                receiver.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await receiver.task


class SteadyPublisher:
    """Publishes numbered events at `rate` per second through its own Redis connection.

    A publish that fails (Redis down) is retried with the same number until it is
    acknowledged, so the published sequence stays 0..published-1 with no holes; `errors`
    counts the failed attempts. A failure can be ambiguous (the script ran, the reply was
    lost): before retrying, the publisher reads the channel's newest history entry, as a
    careful backend would, and does not publish again what is already there."""

    def __init__(self, redis_url: str, channel: str, rate: float, history_size: int = 1000) -> None:
        self.redis_url = redis_url
        self.policy = HistoryPolicy(Retention(history_size, 3600.0))
        self.channel = channel
        self.rate = rate
        self.published = 0
        self.errors = 0
        self.landed_anyway = 0  # failed publishes found in history: not sent twice
        self.acked_at: list[float] = []  # monotonic time of each acknowledgement
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> int:
        """Stop after the publish in flight; returns how many were published."""
        self._stop.set()
        if self._task is not None:
            await self._task
        return self.published

    async def _run(self) -> None:
        reader = aioredis.Redis.from_url(self.redis_url, socket_timeout=1.0)
        try:
            async with connect_publisher(self.redis_url, self.policy) as publisher:
                await self._loop(publisher, reader)
        finally:
            await reader.aclose()

    async def _loop(self, publisher: Publisher, reader: aioredis.Redis) -> None:
        interval = 1.0 / self.rate
        due = time.monotonic()
        uncertain = False
        while not self._stop.is_set():
            if uncertain:
                landed = await self._landed(reader)
                if landed is None:  # cannot tell yet: Redis still away
                    await asyncio.sleep(0.05)
                    continue
                uncertain = False
                if landed:
                    self.landed_anyway += 1
                    self._acked()
                    continue
            try:
                await publisher.publish(self.channel, self.event(self.published))
            except (PublishError, OSError):
                self.errors += 1
                uncertain = True
                await asyncio.sleep(0.05)
                due = time.monotonic()
                continue
            self._acked()
            due = max(due + interval, time.monotonic() - interval)
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    def event(self, n: int) -> dict[str, Any]:
        return {"type": "chaos", "n": n, "t": time.time()}

    def _acked(self) -> None:
        self.acked_at.append(time.monotonic())
        self.published += 1

    async def _landed(self, reader: aioredis.Redis) -> bool | None:
        """Whether event number `published` is the newest in the channel's history."""
        try:
            entries = await reader.xrevrange(f"rt:{{{self.channel}}}:history", count=1)
        except (RedisError, OSError):
            return None
        if not entries:
            return False
        fields = entries[0][1] or {}
        data = json.loads(fields.get(b"d") or b"{}")
        return bool(data.get("n") == self.published)

    def first_published_after(self, since: float) -> int | None:
        return next((n for n, at in enumerate(self.acked_at) if at >= since), None)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
