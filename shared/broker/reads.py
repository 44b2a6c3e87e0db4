"""Reads made in the same event-loop turn leave together, and identical ones are made once:
history reads (the broker) and revocation checks (the revocation store); presence joins
(gateway/presence.py) leave together the same way. Under a burst of
connects (a reconnect storm, a node's start) every client checks its token, reads its own
channel's position and recovers its subscriptions: one pipeline per turn instead of one round
trip per read costs Redis and the node far less per read, and the clients of one channel that
reconnect from the same position share one read.

A read is issued no earlier than it was asked for (at the end of the turn that asked), so
whatever a caller did before asking (joined a channel, subscribed) precedes it, as with a
direct call. A waiter that is cancelled leaves the shared read to the others. For the same
reason a read is shared only with the reads asked in the same turn, never with one already
issued: joining it would hand a caller an answer read before whatever it did just before asking.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

ReadKey = tuple[str, int, int]  # a history read: (channel, since, limit)


class ReadCounts:
    """Reads asked for and reads sent to Redis: `asked - issued` were merged into an identical
    read of the same turn. Plain integers (no lock), read when metrics are scraped."""

    __slots__ = ("asked", "issued")

    def __init__(self) -> None:
        self.asked = 0
        self.issued = 0


class TurnBatch(Generic[K, V]):
    """`one(key)` reads a batch of one; `many(keys)` a batch of two or more, with an answer
    (or the exception) per key, in order."""

    def __init__(
        self,
        one: Callable[[K], Awaitable[V]],
        many: Callable[[list[K]], Awaitable[list[V | BaseException]]],
        counts: ReadCounts | None = None,
    ) -> None:
        self._one = one
        self._many = many
        self.counts = counts or ReadCounts()
        self._pending: dict[K, asyncio.Future[V]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def read(self, key: K) -> V:
        self.counts.asked += 1
        future = self._pending.get(key)
        if future is None:
            loop = asyncio.get_running_loop()
            if not self._pending:
                loop.call_soon(self._flush)
            future = self._pending[key] = loop.create_future()
        return await asyncio.shield(future)

    def _flush(self) -> None:
        batch, self._pending = self._pending, {}
        task = asyncio.create_task(self._run(batch), name="batched reads")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: dict[K, asyncio.Future[V]]) -> None:
        keys = list(batch)
        self.counts.issued += len(keys)
        try:
            if len(keys) == 1:
                answers: list[V | BaseException] = [await self._one(keys[0])]
            else:
                answers = await self._many(keys)
        except Exception as exc:  # every waiter of the batch gets it
            answers = [exc] * len(keys)
        except BaseException:  # cancelled (the broker closes): so are its waiters
            for future in batch.values():
                future.cancel()
            raise
        _settle(batch, answers)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _settle(batch: dict[K, asyncio.Future[V]], answers: list[V | BaseException]) -> None:
    for future, answer in zip(batch.values(), answers, strict=True):
        if future.done():
            continue
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)
