"""One pub/sub connection to one Redis server, watched: a link that stops answering is dead.

redis-py notices a closed socket, but not a silent one (a partition that drops packets without
a reset): a read just times out, again and again, for as long as TCP keeps the socket. So the
link PINGs whenever it has heard nothing for `Liveness.interval` seconds and declares itself
dead after `Liveness.timeout` seconds without any answer. The broker then drops it and
reconnects, and the hub repairs the gap from history.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.exceptions import ConnectionError as RedisConnectionError


@dataclass(frozen=True, slots=True)
class Liveness:
    """PING a Redis link after `interval` seconds of silence; it is dead after `timeout` seconds
    without an answer. `timeout` also bounds every Redis command and connection attempt."""

    interval: float = 1.0
    timeout: float = 3.0

    def __post_init__(self) -> None:
        if not 0 < self.interval < self.timeout:
            raise ValueError("Redis ping interval must be > 0 and below the ping timeout")


class LinkDead(RedisConnectionError):
    """The link cannot be trusted to deliver any more (closed, silent, or resharded)."""


class LinkSilent(LinkDead):
    """Nothing came back within the timeout: the peer is gone without saying so."""


MessageHandler = Callable[[bytes, bytes], None]  # (Redis channel name, payload)
_MESSAGES = (b"message", b"smessage")


def _buffered_replies(pubsub: Any) -> Any:
    """The hiredis reader of `pubsub`'s connection, whose `gets()` hands out the replies
    already read from the socket (`NOT_ENOUGH_DATA` once it holds no whole one); None where
    the parser is another, and then every message goes through `get_message`. redis-py's
    internals (the range is pinned in pyproject.toml)."""
    parser = getattr(getattr(pubsub, "connection", None), "_parser", None)
    if not isinstance(parser, _AsyncHiredisParser):
        return None
    reader = getattr(parser, "_reader", None)
    return reader if callable(getattr(reader, "gets", None)) else None


class PubSubLink:
    """A dedicated pub/sub connection. `open()`, then one task runs `run()` until it raises;
    any task may `subscribe`/`unsubscribe` meanwhile. `alive` is set once the server answered
    a PING sent after the initial subscriptions, i.e. once they are all in effect."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        name: str,
        sharded: bool,
        liveness: Liveness,
        on_message: MessageHandler,
    ) -> None:
        self.name = name
        self.alive = asyncio.Event()
        self._client = client
        self._pubsub = client.pubsub()
        self._sharded = sharded
        self._liveness = liveness
        self._on_message = on_message
        self._unsubscribing: Counter[str] = Counter()

    async def open(self, names: Iterable[str]) -> None:
        await self._pubsub.connect()  # type: ignore[no-untyped-call]
        names = list(names)
        if self._sharded:  # one SSUBSCRIBE per channel: a command may not span slots
            for name in names:
                await self._pubsub.ssubscribe(name)
        else:
            for start in range(0, len(names), 500):
                await self._pubsub.subscribe(*names[start : start + 500])
        await self._pubsub.ping()

    async def subscribe(self, *names: str) -> None:
        """One command for all `names` (one per name where sharded: a command may not span
        slots)."""
        if self._sharded:
            for name in names:
                await self._pubsub.ssubscribe(name)
        else:
            await self._pubsub.subscribe(*names)

    async def unsubscribe(self, *names: str) -> None:
        if self._sharded:
            for name in names:
                self._unsubscribing[name] += 1  # so its confirmation is not taken as a move
                await self._pubsub.sunsubscribe(name)
        else:
            await self._pubsub.unsubscribe(*names)

    async def run(self) -> None:
        """Deliver messages until the link fails; never returns normally."""
        loop = asyncio.get_running_loop()
        interval, timeout = self._liveness.interval, self._liveness.timeout
        heard = pinged = loop.time()  # open() has just sent a PING
        poll = min(interval / 2, 0.25)
        buffered = _buffered_replies(self._pubsub)
        while True:
            message = await self._pubsub.get_message(timeout=poll)
            now = loop.time()
            if message is not None:
                heard = now
                self._handle(message)
                if buffered is not None:
                    await self._drain(buffered)
            elif now - heard > timeout:
                raise LinkSilent(f"{self.name}: no answer for {now - heard:.1f}s")
            if now - max(heard, pinged) >= interval:
                await self._pubsub.ping()
                pinged = now

    async def _drain(self, reader: Any) -> None:
        """Handle the replies the parser already holds, read with the last message (a burst
        arrives in one socket read): without `get_message`'s timeout, task switch and dict
        per message. Anything but a message goes through redis-py, as it would have."""
        while (response := reader.gets()) is not NOT_ENOUGH_DATA:
            # A list on RESP2, a list subclass (a push) on RESP3.
            if isinstance(response, list) and len(response) == 3 and response[0] in _MESSAGES:
                self._on_message(response[1], response[2])
            elif isinstance(response, BaseException):
                raise response
            else:
                message = await self._pubsub.handle_message(response)  # type: ignore[no-untyped-call]
                if message is not None:
                    self._handle(message)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind in ("message", "smessage"):
            self._on_message(message["channel"], message["data"])
        elif kind == "pong":
            self.alive.set()
        elif kind == "sunsubscribe":
            name = message["channel"].decode()
            if self._unsubscribing[name] > 0:
                self._unsubscribing[name] -= 1
                if not self._unsubscribing[name]:
                    del self._unsubscribing[name]
            else:
                # Unasked: the cluster moved this channel's slot to another node.
                raise LinkDead(f"{self.name}: {name} moved to another node")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            await self._client.aclose()
