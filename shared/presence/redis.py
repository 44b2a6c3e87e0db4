"""Redis presence, on one server or a Redis Cluster: a sorted set (client id -> expiry), a hash
(client id -> details) and a hash (user id -> present clients of that user) per channel,
hash-tagged with the channel so that each script touches one slot. Entries expire by time, so
a node killed without cleanup vanishes from every list once its refreshes stop.

A node's periodic refresh is a few pipelines: script calls covering the node's clients of a
channel, up to `CHUNK` entries a pipeline, each sent in one round trip (per Cluster node:
redis-py's cluster pipeline groups the calls by the node owning each slot). The chunks bound
what one call costs: a node with 100,000 entries (10,000 clients on 10 session channels) sent
them all in one turn of its loop, and Redis ran 300,000 commands in a row, stalling live
delivery on both every refresh."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any

import redis.asyncio as aioredis
from archmesh_client.channels import presence_info_key, presence_key, presence_users_key
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from shared.lua import lua
from shared.presence.base import PresenceEntry, PresenceStats
from shared.redis_calls import as_broker_error


class RedisPresence:
    def __init__(self, client: aioredis.Redis | RedisCluster) -> None:
        self._redis = client
        self._join = client.register_script(lua("shared.presence", "join.lua"))
        self._present = client.register_script(lua("shared.presence", "present.lua"))
        self._leave = client.register_script(lua("shared.presence", "leave.lua"))

    async def join(self, channel: str, entry: PresenceEntry, ttl: float) -> None:
        await self._run(self._join, channel, _join_args([entry], ttl))

    async def refresh(self, channels: Mapping[str, Sequence[PresenceEntry]], ttl: float) -> None:
        for calls in _chunks(channels, ttl):
            await self._pipelined(self._join, calls)

    async def _pipelined(self, script: Any, calls: list[tuple[str, list[str | int]]]) -> None:
        """One call of `script` per (channel, args), in one pipeline."""
        if not calls:
            return
        with as_broker_error("presence"):
            pipe = self._redis.pipeline(transaction=False)
            for channel, args in calls:
                # execute_command: the cluster pipeline blocks its evalsha method (not the
                # command); each call names its keys, all in its channel's slot.
                pipe.execute_command("EVALSHA", script.sha, 3, *_keys(channel), *args)
            results = await pipe.execute(raise_on_error=False)
        for (channel, args), result in zip(calls, results, strict=True):
            if isinstance(result, NoScriptError):
                # The script cache was flushed (restart, failover): the script object loads it.
                await self._run(script, channel, args)
            elif isinstance(result, Exception):
                with as_broker_error("presence"):
                    raise result

    async def leave(self, channel: str, client_id: str) -> None:
        await self._run(self._leave, channel, [client_id])

    async def leave_many(self, leaves: Sequence[tuple[str, str]]) -> None:
        await self._pipelined(self._leave, [(channel, [client]) for channel, client in leaves])

    async def members(self, channel: str) -> list[PresenceEntry]:
        flat = await self._run(self._present, channel, ["list"])
        entries = []
        for i in range(0, len(flat), 2):
            details = json.loads(flat[i + 1])
            entries.append(PresenceEntry(flat[i].decode(), details["user_id"], details["node"]))
        return entries

    async def stats(self, channel: str) -> PresenceStats:
        connections, users = await self._run(self._present, channel, ["count"])
        return PresenceStats(int(connections), int(users))

    async def _run(self, script: Any, channel: str, args: list[str | int]) -> Any:
        with as_broker_error("presence"):
            return await script(keys=_keys(channel), args=args)

    async def close(self) -> None:
        await self._redis.aclose()


def _keys(channel: str) -> list[str]:
    return [presence_key(channel), presence_info_key(channel), presence_users_key(channel)]


# Entries per pipeline of a refresh (and per script call): each costs Redis two commands and
# a few microseconds here.
CHUNK = 1000


def _chunks(
    channels: Mapping[str, Sequence[PresenceEntry]], ttl: float
) -> Iterator[list[tuple[str, list[str | int]]]]:
    """The script calls of a refresh, in pipelines of at most CHUNK entries (a channel with
    more is split over several calls)."""
    calls: list[tuple[str, list[str | int]]] = []
    size = 0
    for channel, entries in channels.items():
        for start in range(0, len(entries), CHUNK):
            part = entries[start : start + CHUNK]
            if size + len(part) > CHUNK and calls:
                yield calls
                calls, size = [], 0
            calls.append((channel, _join_args(part, ttl)))
            size += len(part)
    if calls:
        yield calls


def _join_args(entries: Sequence[PresenceEntry], ttl: float) -> list[str | int]:
    args: list[str | int] = [int(ttl * 1000)]
    for entry in entries:
        args += [entry.client_id, _details(entry.user_id, entry.node)]
    return args


@lru_cache(maxsize=65536)
def _details(user_id: str, node: str) -> str:
    """An entry's details, the same at every refresh: encoded once per user and node."""
    return json.dumps({"user_id": user_id, "node": node})
