"""How many connects and recovering subscribes a node works on at once: at most
`ARCHMESH_HANDSHAKE_CONCURRENCY`, and fewer while its event loop runs late.

A reconnect storm's handshakes are CPU work (tokens, a backlog of missed publications to read
and frame) with little waiting left in them, so a fixed number in progress saturates a core as
well as a large one: every turn of the loop grows, and live delivery, fanned out between turns,
waits with it. While handshakes are in progress the gate measures the loop's lag (how late a
timer every `TICK` seconds fires) and halves the number it admits at once whenever the lag is
above `ARCHMESH_HANDSHAKE_MAX_LAG_MS`, adding one back per tick while it is below (AIMD, as
TCP sizes its window). The storm gets the CPU that live delivery leaves, not the other way
round. At least one handshake is always admitted, so a node never stops taking clients; nobody
waiting is refused or dropped (their sockets stay open)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from types import TracebackType

TICK = 0.02  # seconds between lag readings while handshakes are in progress


class HandshakeGate:
    def __init__(self, concurrency: int, max_lag: float) -> None:
        self.most = concurrency
        self.limit = concurrency  # admitted at once now (between 1 and `most`)
        self.lag = 0.0  # the last reading, seconds
        self._max_lag = max_lag
        self._active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._watcher: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return sum(not w.done() for w in self._waiters)

    async def __aenter__(self) -> None:
        self._watch()
        if self._active < self.limit and not self._waiters:
            self._active += 1
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # admitted as it was cancelled: pass the turn on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(future)
            raise

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        self._active -= 1
        self._admit()

    def _admit(self) -> None:
        while self._waiters and self._active < self.limit:
            future = self._waiters.popleft()
            if not future.done():
                self._active += 1
                future.set_result(None)

    def _watch(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._measure(), name="handshake gate")

    async def _measure(self) -> None:
        """Runs while handshakes are in progress or waiting, then ends (an idle node keeps
        no timer)."""
        loop = asyncio.get_running_loop()
        while self._active or self._waiters:
            due = loop.time() + TICK
            await asyncio.sleep(TICK)
            self.lag = max(0.0, loop.time() - due)
            if self.lag > self._max_lag:
                self.limit = max(1, self.limit // 2)
            elif self.limit < self.most:
                self.limit += 1
                self._admit()
        self.lag = 0.0
        self.limit = self.most

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
