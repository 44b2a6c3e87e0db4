"""Redis presence, on one server or a Redis Cluster: a sorted set (client id -> expiry), a hash
(client id -> details) and a hash (user id -> present clients of that user) per channel,
hash-tagged with the channel so that each script touches one slot. Entries expire by time, so
a node killed without cleanup vanishes from every list once its refreshes stop.

A node's periodic refresh is one pipeline: one script call per channel covering all of the
node's clients there, sent in one round trip (per Cluster node: redis-py's cluster pipeline
groups the calls by the node owning each slot)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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
        calls = [(channel, _join_args(entries, ttl)) for channel, entries in channels.items()]
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


def _join_args(entries: Sequence[PresenceEntry], ttl: float) -> list[str | int]:
    args: list[str | int] = [int(ttl * 1000)]
    for entry in entries:
        args += [entry.client_id, json.dumps({"user_id": entry.user_id, "node": entry.node})]
    return args
