"""Redis presence, on one server or a Redis Cluster: a sorted set (client id -> expiry) and a
hash (client id -> details) per channel, hash-tagged with the channel so that each script
touches one slot. Entries expire by time, so a node killed without cleanup vanishes from every
list once its refreshes stop."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis
from archmesh_client.channels import presence_info_key, presence_key
from redis.asyncio.cluster import RedisCluster

from shared.lua import lua
from shared.presence.base import PresenceEntry
from shared.redis_calls import as_broker_error


class RedisPresence:
    def __init__(self, client: aioredis.Redis | RedisCluster) -> None:
        self._redis = client
        self._join = client.register_script(lua("shared.presence", "join.lua"))
        self._members = client.register_script(lua("shared.presence", "members.lua"))
        self._leave = client.register_script(lua("shared.presence", "leave.lua"))

    async def join(self, channel: str, entry: PresenceEntry, ttl: float) -> None:
        info = json.dumps({"user_id": entry.user_id, "node": entry.node})
        args: list[str | int] = [entry.client_id, info, int(ttl * 1000)]
        await self._run(self._join, channel, args)

    async def leave(self, channel: str, client_id: str) -> None:
        await self._run(self._leave, channel, [client_id])

    async def members(self, channel: str) -> list[PresenceEntry]:
        flat = await self._run(self._members, channel, [])
        entries = []
        for i in range(0, len(flat), 2):
            details = json.loads(flat[i + 1])
            entries.append(PresenceEntry(flat[i].decode(), details["user_id"], details["node"]))
        return entries

    async def _run(self, script: Any, channel: str, args: list[str | int]) -> Any:
        keys = [presence_key(channel), presence_info_key(channel)]
        with as_broker_error("presence"):
            return await script(keys=keys, args=args)

    async def close(self) -> None:
        await self._redis.aclose()
