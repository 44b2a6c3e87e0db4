"""Reads made in the same event-loop turn leave together, and identical ones are made once:
history reads (the broker) and revocation checks (the revocation store); presence joins
(gateway/presence.py) leave together the same way. Under a burst of connects (a reconnect
storm, a node's start) every client checks its token, reads its own channel's position and
recovers its subscriptions: one pipeline per turn instead of one round trip per read costs
Redis and the node far less per read, and the clients of one channel that reconnect from the
same position share one read.

A read is issued no earlier than it was asked for (at the end of the turn that asked), so
whatever a caller did before asking (joined a channel, subscribed) precedes it, as with a
direct call. A waiter that is cancelled leaves the shared read to the others. For the same
reason a read is shared only with the reads asked before it is issued, never with one already
issued: joining it would hand a caller an answer read before whatever it did just before asking.

While a batch is in flight, the next one gathers what is asked meanwhile (over several turns)
and leaves when the batch before it came back: one round trip per batch, never more than one
batch on its way. A connect arrives in its own turn; under a burst of them the node is busy
and a round trip long, so batches grow with the load (a few reads each at a hundred connects
in progress), and each connect costs its share of one pipeline, not a round trip of its own
per read (redis-py's Python per call is most of what a read costs the node). An idle node
sends a read at the end of the turn that asked, as before.
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
        # key -> a future per waiter (cancelling one leaves the others theirs; no shield, which
        # costs two more futures and callbacks per read)
        self._pending: dict[K, list[asyncio.Future[V]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._flushing = False  # a flush is scheduled for the end of this turn
        self._in_flight = False  # a batch is on its way: the pending ones wait for it
        self._closed = False

    async def read(self, key: K) -> V:
        self.counts.asked += 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V] = loop.create_future()
        waiters = self._pending.get(key)
        if waiters is None:
            self._pending[key] = [future]
            if not self._flushing and not self._in_flight:
                self._flushing = True
                loop.call_soon(self._flush)
        else:
            waiters.append(future)
        return await future

    def _flush(self) -> None:
        self._flushing = False
        if self._in_flight or not self._pending or self._closed:
            return
        batch, self._pending = self._pending, {}
        self._in_flight = True
        task = asyncio.create_task(self._run(batch), name="batched reads")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        """The batch came back (or failed, or was cancelled): what gathered meanwhile leaves
        at the end of this turn."""
        self._tasks.discard(task)
        self._in_flight = False
        if self._pending and not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _run(self, batch: dict[K, list[asyncio.Future[V]]]) -> None:
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
            for waiters in batch.values():
                for future in waiters:
                    future.cancel()
            raise
        _settle(batch, answers)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        pending, self._pending = self._pending, {}
        for waiters in pending.values():  # gathered behind the cancelled batch
            for future in waiters:
                future.cancel()


def _settle(batch: dict[K, list[asyncio.Future[V]]], answers: list[V | BaseException]) -> None:
    for waiters, answer in zip(batch.values(), answers, strict=True):
        for future in waiters:
            if future.done():  # its waiter was cancelled
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)
