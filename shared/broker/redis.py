"""Redis broker: one pub/sub connection per node, history and presence in Lua scripts."""

from __future__ import annotations

import asyncio
import contextlib
import json
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from shared.backoff import Backoff
from shared.broker.base import (
    BrokerError,
    Handler,
    History,
    PresenceEntry,
    Publication,
    StateHandler,
    StreamPosition,
)
from shared.broker.policy import HistoryPolicy
from shared.channels import (
    channel_of_pubsub,
    history_key,
    meta_key,
    presence_info_key,
    presence_key,
    pubsub_name,
)
from shared.logging import get_logger

log = get_logger(__name__)

_PRESENCE_JOIN = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], ms + ttl, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
redis.call('PEXPIRE', KEYS[2], ttl * 2)
return 1
"""

_PRESENCE_GET = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms)
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('HDEL', KEYS[2], unpack(gone))
end
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local reply = {}
for _, id in ipairs(ids) do
  local info = redis.call('HGET', KEYS[2], id)
  if info then
    reply[#reply + 1] = id
    reply[#reply + 1] = info
  end
end
return reply
"""

_NETWORK_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


def _script(name: str) -> str:
    return resources.files("shared.broker").joinpath(name).read_text()


class RedisBroker:
    def __init__(self, url: str, policy: HistoryPolicy | None = None) -> None:
        self._url = url
        self._policy = policy or HistoryPolicy()
        # No hidden retries: a publish retried by the client could be applied twice, and the
        # reader below owns reconnects so that it knows when to repair gaps.
        options: dict[str, Any] = {"retry": Retry(NoBackoff(), 0), "socket_connect_timeout": 5}
        self._redis = aioredis.Redis.from_url(url, **options)
        self._pubsub_client = aioredis.Redis.from_url(url, health_check_interval=5, **options)
        self._publish = self._redis.register_script(_script("publish.lua"))
        self._history = self._redis.register_script(_script("history.lua"))
        self._presence_join = self._redis.register_script(_PRESENCE_JOIN)
        self._presence_get = self._redis.register_script(_PRESENCE_GET)
        self._channels: set[str] = set()
        self._pubsub: PubSub | None = None
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._connected = False
        self._on_message: Handler | None = None
        self._on_state: StateHandler | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    async def start(self, on_message: Handler, on_state: StateHandler | None = None) -> None:
        self._on_message, self._on_state = on_message, on_state
        self._reader = asyncio.create_task(self._read_forever(), name="redis-broker-reader")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._drop_pubsub()
        await self._redis.aclose()
        await self._pubsub_client.aclose()

    # -- fan-in ---------------------------------------------------------------------------

    async def _read_forever(self) -> None:
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            try:
                pubsub = await self._connect_pubsub()
                backoff.reset()
                await self._read(pubsub)
            except _NETWORK_ERRORS as exc:
                delay = backoff.next_delay()
                log.warning(
                    "redis_unreachable", error=str(exc) or type(exc).__name__, retry_in=delay
                )
                self._set_connected(False)
                await self._drop_pubsub()
                await asyncio.sleep(delay)

    async def _connect_pubsub(self) -> PubSub:
        pubsub = self._pubsub_client.pubsub()
        self._pubsub = pubsub
        await pubsub.connect()  # type: ignore[no-untyped-call]
        async with self._lock:
            names = [pubsub_name(channel) for channel in self._channels]
            if names:
                await pubsub.subscribe(*names)
            self._set_connected(True)
        return pubsub

    async def _read(self, pubsub: PubSub) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message["type"] == "message":
                self._deliver(message["channel"], message["data"])

    def _deliver(self, name: bytes, raw: bytes) -> None:
        channel = channel_of_pubsub(name.decode())
        publication = _parse(channel, raw) if channel else None
        if publication is None:
            log.warning("invalid_pubsub_message", redis_channel=name.decode(errors="replace"))
            return
        assert self._on_message is not None
        try:
            self._on_message(publication)
        except Exception:
            log.exception("message_handler_failed", channel=channel)

    def _set_connected(self, connected: bool) -> None:
        if connected == self._connected:
            return
        self._connected = connected
        log.info("redis_pubsub_" + ("connected" if connected else "lost"), url=_safe_url(self._url))
        if self._on_state is not None:
            self._on_state(connected)

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(*_NETWORK_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def subscribe(self, channel: str) -> None:
        async with self._lock:
            self._channels.add(channel)
            await self._send("subscribe", channel)

    async def unsubscribe(self, channel: str) -> None:
        async with self._lock:
            self._channels.discard(channel)
            await self._send("unsubscribe", channel)

    async def _send(self, command: str, channel: str) -> None:
        # While disconnected the reader resubscribes the whole set on reconnect.
        if self._pubsub is not None and self._connected:
            try:
                await getattr(self._pubsub, command)(pubsub_name(channel))
            except _NETWORK_ERRORS as exc:
                log.warning("redis_subscribe_failed", channel=channel, error=str(exc))

    # -- commands -------------------------------------------------------------------------

    async def publish(self, channel: str, data: str) -> StreamPosition:
        retention = self._policy.for_channel(channel)
        args: list[str | int] = [data, retention.size, int(retention.ttl * 1000)]
        try:
            offset, epoch = await self._publish(
                keys=[meta_key(channel), history_key(channel)], args=args
            )
        except _NETWORK_ERRORS as exc:
            raise BrokerError(f"publish failed: {exc}") from exc
        return StreamPosition(int(offset), epoch.decode())

    async def history(self, channel: str, since: int, limit: int) -> History:
        ttl_ms = int(self._policy.for_channel(channel).ttl * 1000)
        keys = [meta_key(channel), history_key(channel)]
        try:
            reply = await self._history(keys=keys, args=[since, limit, ttl_ms])
        except _NETWORK_ERRORS as exc:
            raise BrokerError(f"history failed: {exc}") from exc
        offset, epoch, first = int(reply[0]), reply[1].decode(), int(reply[2])
        position = StreamPosition(offset, epoch)
        entries = reply[3:]
        publications = [
            Publication(channel, entries[i + 1].decode(), int(entries[i]), epoch)
            for i in range(0, len(entries), 2)
        ]
        covered = since == offset or (first != -1 and first <= since + 1)
        reaches_head = since == offset or (bool(publications) and publications[-1].offset == offset)
        return History(publications, position, 0 <= since <= offset and covered and reaches_head)

    async def position(self, channel: str) -> StreamPosition:
        return (await self.history(channel, 0, 0)).position

    async def presence_join(self, channel: str, entry: PresenceEntry, ttl: float) -> None:
        info = json.dumps({"user_id": entry.user_id, "node": entry.node})
        keys = [presence_key(channel), presence_info_key(channel)]
        try:
            await self._presence_join(keys=keys, args=[entry.client_id, info, int(ttl * 1000)])
        except _NETWORK_ERRORS as exc:
            raise BrokerError(f"presence failed: {exc}") from exc

    async def presence_leave(self, channel: str, client_id: str) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(presence_key(channel), client_id)
                pipe.hdel(presence_info_key(channel), client_id)
                await pipe.execute()
        except _NETWORK_ERRORS as exc:
            raise BrokerError(f"presence failed: {exc}") from exc

    async def presence(self, channel: str) -> list[PresenceEntry]:
        keys = [presence_key(channel), presence_info_key(channel)]
        try:
            flat = await self._presence_get(keys=keys)
        except _NETWORK_ERRORS as exc:
            raise BrokerError(f"presence failed: {exc}") from exc
        entries = []
        for i in range(0, len(flat), 2):
            details = json.loads(flat[i + 1])
            entries.append(PresenceEntry(flat[i].decode(), details["user_id"], details["node"]))
        return entries

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except _NETWORK_ERRORS:
            return False


def _parse(channel: str, raw: bytes) -> Publication | None:
    """`<offset>:<epoch>:<json>` from the publish script, or bare JSON from a plain PUBLISH."""
    try:
        if raw[:1] == b"{":
            if not isinstance(orjson.loads(raw), dict):
                return None
            return Publication(channel, raw.decode())
        offset, _, rest = raw.partition(b":")
        epoch, _, data = rest.partition(b":")
        if not epoch.isalnum() or data[:1] != b"{":
            return None
        return Publication(channel, data.decode(), int(offset), epoch.decode())
    except ValueError:
        return None


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    _, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{'***@' if at else ''}{host}"
