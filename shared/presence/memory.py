"""In-memory presence: the embedded default for one process, with the Redis store's expiry."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from shared.presence.base import PresenceEntry, PresenceStats


class MemoryPresence:
    def __init__(self) -> None:
        # channel -> client id -> (entry, monotonic expiry)
        self._channels: dict[str, dict[str, tuple[PresenceEntry, float]]] = {}

    async def join(self, channel: str, entry: PresenceEntry, ttl: float) -> None:
        members = self._channels.setdefault(channel, {})
        members[entry.client_id] = (entry, time.monotonic() + ttl)

    async def refresh(self, channels: Mapping[str, Sequence[PresenceEntry]], ttl: float) -> None:
        for channel, entries in channels.items():
            for entry in entries:
                await self.join(channel, entry, ttl)

    async def leave(self, channel: str, client_id: str) -> None:
        members = self._channels.get(channel, {})
        members.pop(client_id, None)
        if not members:
            self._channels.pop(channel, None)

    async def leave_many(self, leaves: Sequence[tuple[str, str]]) -> None:
        for channel, client_id in leaves:
            await self.leave(channel, client_id)

    async def members(self, channel: str) -> list[PresenceEntry]:
        now = time.monotonic()
        members = self._channels.get(channel, {})
        for client_id in [c for c, (_, expiry) in members.items() if expiry <= now]:
            del members[client_id]
        return [entry for entry, _ in members.values()]

    async def stats(self, channel: str) -> PresenceStats:
        # The embedded store is for one process: counting what members lists is cheap enough.
        entries = await self.members(channel)
        return PresenceStats(len(entries), len({entry.user_id for entry in entries}))

    async def close(self) -> None:
        self._channels.clear()
