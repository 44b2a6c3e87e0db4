"""Node announcements: every gateway and notifier process says, every few seconds, that it is
alive and what it is doing (role, version, uptime, its figures), under a short TTL.

Operators see the deployment from here (the console at `/admin`): a node that stops
announcing (killed, cut off) disappears once its TTL has passed; a draining node says so.

Layout on Redis: a sorted set `rt:{nodes}` (node id -> expiry, in the Redis server's own
milliseconds) and a hash `rt:{nodes}:info` (node id -> its last announcement, JSON). Both carry
the hash tag `{nodes}`, so one script (announce.lua) touches one slot and the same code runs on
Redis Cluster, where SCAN over every master would not be cheap. The keys live here, not in the
gateway's (archmesh_client.channels) or the notifier's (notifier/keys.py) layout, because
both roles write them and neither owns them. Without Redis (`memory://`, `archmesh-rt dev`)
the board is one per process, which is what that mode is: every part of it in one process.

Rates (deliveries/s, publications/s, throughput/s) are worked out by the announcer from the
counters a node reports, over the time between two announcements."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Protocol

import orjson

from shared.broker import BrokerError, Liveness, backend_of
from shared.logging import get_logger
from shared.lua import lua
from shared.redis_calls import as_broker_error, redis_client

log = get_logger(__name__)

ANNOUNCED = "rt:{nodes}"  # zset: node id -> expiry (ms, Redis server time)
ANNOUNCEMENTS = "rt:{nodes}:info"  # hash: node id -> announcement JSON


def version() -> str:
    """The installed product's version (what the console shows per node)."""
    try:
        return metadata.version("archmesh-realtime")
    except metadata.PackageNotFoundError:
        return "unknown"


class NodeBoard(Protocol):
    """Where nodes announce themselves and the console reads them."""

    async def announce(self, node: str, announcement: dict[str, Any], ttl: float) -> None: ...

    async def withdraw(self, node: str) -> None: ...

    async def nodes(self) -> list[dict[str, Any]]:
        """Every node whose last announcement has not expired, in no particular order."""
        ...

    async def close(self) -> None: ...


class MemoryBoard:
    """One process's board (`memory://`): every part of that process announces here."""

    def __init__(self) -> None:
        self._nodes: dict[str, tuple[float, dict[str, Any]]] = {}  # node -> (expiry, JSON)

    async def announce(self, node: str, announcement: dict[str, Any], ttl: float) -> None:
        self._nodes[node] = (time.monotonic() + ttl, announcement)

    async def withdraw(self, node: str) -> None:
        self._nodes.pop(node, None)

    async def nodes(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        for node in [n for n, (expiry, _) in self._nodes.items() if expiry <= now]:
            del self._nodes[node]
        return [announcement for _, announcement in self._nodes.values()]

    async def close(self) -> None:
        """The board outlives any one part of the process."""


class RedisBoard:
    """Redis or Redis Cluster: announce.lua on the `{nodes}` slot."""

    def __init__(self, client: Any) -> None:
        self._redis = client
        self._script = client.register_script(lua("shared", "announce.lua"))

    async def _run(self, *args: str | int) -> Any:
        with as_broker_error("announcement"):
            return await self._script(keys=[ANNOUNCED, ANNOUNCEMENTS], args=list(args))

    async def announce(self, node: str, announcement: dict[str, Any], ttl: float) -> None:
        await self._run("announce", node, int(ttl * 1000), orjson.dumps(announcement).decode())

    async def withdraw(self, node: str) -> None:
        await self._run("withdraw", node)

    async def nodes(self) -> list[dict[str, Any]]:
        return [orjson.loads(raw) for raw in await self._run("list")]

    async def close(self) -> None:
        await self._redis.aclose()


_PROCESS_BOARD = MemoryBoard()


def create_board(url: str, liveness: Liveness | None = None) -> NodeBoard:
    """The board on the deployment's Redis (from the same URL as the broker), or the process's
    own without one; an unknown scheme fails loudly (`backend_of`)."""
    backend = backend_of(url)
    if backend == "memory":
        return _PROCESS_BOARD
    return RedisBoard(redis_client(url, liveness or Liveness(), cluster=backend == "cluster"))


@dataclass(slots=True)
class Figures:
    """What a node reports each time: gauges as they are, counters turned into rates."""

    gauges: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)  # name -> running total


class Announcer:
    """A node's announcement loop: every `interval` seconds, its identity and figures with a
    TTL of `ttl`; withdrawn on a clean stop. A failed announcement is logged and the next one
    tries again (meanwhile the node may vanish from the console: that is what operators
    should see of a node that cannot reach Redis)."""

    def __init__(
        self,
        board: NodeBoard,
        node: str,
        role: str,
        figures: Callable[[], Awaitable[Figures]],
        *,
        interval: float,
        ttl: float,
    ) -> None:
        self._board = board
        self._figures = figures
        self._interval = interval
        self._ttl = ttl
        self._identity = {"node": node, "role": role, "version": version()}
        # One process may be both (`archmesh-rt dev`): a node id is unique per role.
        self._member = f"{role}:{node}"
        self._started = time.time()
        self._last: tuple[float, dict[str, float]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._now = asyncio.Event()
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="announcer")

    def poke(self) -> None:
        """Announce now (e.g. a drain began), not at the next tick."""
        self._now.set()

    async def stop(self) -> None:
        """Let the loop finish its announcement (a cancellation landing inside a redis-py
        call can be swallowed there), then withdraw; a stuck loop is cancelled after 5 s."""
        self._stopping = True
        self._now.set()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=5.0)
            if not self._task.done():
                self._task.cancel()
        with contextlib.suppress(BrokerError):
            await self._board.withdraw(self._member)
        await self._board.close()

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self._board.announce(self._member, await self.announcement(), self._ttl)
            except BrokerError as exc:
                log.warning("announce_failed", error=str(exc))
            except Exception:  # a figure that failed to read must not end the loop
                log.exception("announce_failed")
            if self._stopping:
                return
            self._now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._now.wait(), self._interval)

    async def announcement(self) -> dict[str, Any]:
        """This node's announcement now: identity, uptime, gauges and rates per second."""
        figures = await self._figures()
        now = time.monotonic()
        rates: dict[str, float] = {}
        if self._last is not None:
            then, before = self._last
            elapsed = max(now - then, 1e-3)
            for name, total in figures.counters.items():
                rates[name] = round(max(total - before.get(name, total), 0) / elapsed, 2)
        else:
            rates = dict.fromkeys(figures.counters, 0.0)
        self._last = (now, dict(figures.counters))
        return {
            **self._identity,
            "started_at": self._started,
            "uptime": round(time.time() - self._started, 1),
            "at": time.time(),
            "ttl": self._ttl,
            **figures.gauges,
            "rates": rates,
        }
