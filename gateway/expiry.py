"""Token expiries of every connection on a node, on one event-loop timer.

A timer handle per connection costs several hundred bytes (and a libuv timer under uvloop);
an entry here is a two-slot object in a heap. Only the earliest entry has a timer."""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable


class Expiry:
    __slots__ = ("at", "callback")

    def __init__(self, at: float, callback: Callable[[], None]) -> None:
        self.at = at  # event-loop time
        self.callback: Callable[[], None] | None = callback

    def __lt__(self, other: Expiry) -> bool:
        return self.at < other.at

    def cancel(self) -> None:
        self.callback = None  # stays in the heap until its time, holding no reference


class Expiries:
    def __init__(self) -> None:
        self._heap: list[Expiry] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def add(self, expires_at: float, callback: Callable[[], None]) -> Expiry:
        """Call `callback` at wall-clock time `expires_at` (seconds since the epoch)."""
        loop = asyncio.get_running_loop()
        entry = Expiry(loop.time() + max(0.0, expires_at - time.time()), callback)
        heapq.heappush(self._heap, entry)
        if entry.at < self._timer_at:
            self._arm(loop, entry.at)
        return entry

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(at, self._fire)

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer, self._timer_at = None, float("inf")
        heap, now = self._heap, loop.time()
        due = []
        while heap and (heap[0].at <= now or heap[0].callback is None):
            callback = heapq.heappop(heap).callback
            if callback is not None:
                due.append(callback)
        if heap:
            self._arm(loop, heap[0].at)
        for callback in due:
            callback()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._heap.clear()
        self._timer, self._timer_at = None, float("inf")
