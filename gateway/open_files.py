"""How many client sockets a node takes: its open-files limit less a reserve, and saying so
when it is out of them.

Every socket is a file descriptor. Past the process's limit the kernel refuses `accept`, and
uvloop (libuv) then accepts and closes each waiting connection at once: clients see the socket
drop with no answer, and nothing is logged. So a node stops short of the limit itself: while
it holds `limit - ARCHMESH_FD_RESERVE` client sockets (WebSocket and SSE), a new handshake is
refused with 503 `node_full` (a balancer moves it to another node, an SDK backs off and tries
again), counted, and logged at most every `LOG_EVERY` seconds; the sockets it holds are served
as before, and new ones are taken again as soon as some close. The reserve keeps descriptors
for everything else (Redis connections, the listener, API requests, logs). A watcher samples
the descriptors actually open and warns, the same way, if they reach the limit anyway (a
reserve too small, a leak).

At startup (`raise_soft_limit`) the soft limit is raised to the hard one, as Go's runtime and
nginx's `worker_rlimit_nofile` do: a unit that sets a hard limit of 100,000 but leaves the soft
one at 1,024 would otherwise hold a thousand sockets."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from shared.logging import get_logger

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics

try:
    import resource
except ImportError:  # not on every platform
    resource = None  # type: ignore[assignment]

log = get_logger(__name__)

NODE_FULL = "this node holds all the sockets its open-files limit allows; retry another"
LOG_EVERY = 10.0  # seconds between two log lines of the same kind
WATCH_EVERY = 2.0  # seconds between two counts of the descriptors open
_FDS = "/proc/self/fd"


def raise_soft_limit() -> tuple[int, int] | None:
    """Raise the soft open-files limit to the hard one; the (soft, hard) limits after."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft, hard


def soft_limit() -> int | None:
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def open_count() -> int | None:
    """Descriptors open in this process now (Linux), else None. At the limit, listing them
    (which takes one more) fails: that is the limit then."""
    try:
        return len(os.listdir(_FDS))
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return soft_limit()
        return None


class OpenFiles:
    def __init__(self, reserve: int, held: Callable[[], int], metrics: GatewayMetrics) -> None:
        """`held()`: the client sockets the node holds now."""
        self._reserve = reserve
        self._held = held
        self._metrics = metrics
        self.limit: int | None = None
        self.capacity: int | None = None  # client sockets taken at most; None: no limit known
        self._last_log: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}
        self._watcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Read the limit (after `raise_soft_limit`, which the server calls) and watch."""
        self.limit = soft_limit()
        if self.limit is not None:
            self.capacity = max(1, self.limit - self._reserve)
            self._metrics.open_files_limit.set(self.limit)
        if open_count() is not None:
            self._watcher = asyncio.create_task(self._watch(), name="open files")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    def room(self) -> bool:
        """Whether a new client socket may be taken; if not, the refusal is counted (and
        logged, at most every LOG_EVERY seconds)."""
        held = self._held()
        if self.capacity is None or held < self.capacity:
            return True
        self._metrics.connections_refused.inc()
        self._say("open_files_full", held=held, capacity=self.capacity, limit=self.limit)
        return False

    async def _watch(self) -> None:
        while True:
            count = open_count()
            if count is not None:
                self._metrics.open_files.set(count)
                if self.limit is not None and count >= self.limit:
                    self._metrics.open_files_exhausted.inc()
                    self._say("open_files_exhausted", open=count, limit=self.limit)
            await asyncio.sleep(WATCH_EVERY)

    def _say(self, event: str, **figures: int | None) -> None:
        now = time.monotonic()
        self._unlogged[event] = self._unlogged.get(event, 0) + 1
        if now - self._last_log.get(event, -LOG_EVERY) < LOG_EVERY:
            return
        log.warning(event, times=self._unlogged.pop(event), **figures)
        self._last_log[event] = now
