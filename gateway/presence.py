"""This node's part of presence: the connections subscribed here to a tracked channel are
entered in the presence store, refreshed every third of the TTL while they stay, and removed
when they leave. A node that dies stops refreshing, and its entries expire.

The refresh covers the tracked (channel, connection) pairs of the node in store calls of about
REFRESH_BATCH entries (a larger channel's at once, which the store sends in parts), so it costs
a round trip per thousand subscriptions per interval, and no turn of the loop (nor one Redis
call) holds all of a node's 100,000.
Joins and leaves asked in the same event-loop turn go together the same way (`TurnBatch`): a
reconnect storm's clients, each entering ten channels, or a burst of disconnects, cost a
pipeline per turn, not a round trip (and a pooled connection) per entry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from gateway.membership import Member, Membership
from shared.broker import BrokerError
from shared.broker.reads import TurnBatch
from shared.logging import get_logger
from shared.presence import PresenceEntry, PresenceStats, PresenceStore

log = get_logger(__name__)

# Entries a periodic refresh builds and sends at a time.
REFRESH_BATCH = 1000


class PresenceTracker:
    def __init__(
        self,
        store: PresenceStore,
        membership: Membership,
        node: str,
        prefixes: tuple[str, ...] = ("session:",),
        ttl: float = 30.0,
    ) -> None:
        self._store = store
        self._membership = membership
        self._node = node
        self._prefixes = prefixes
        self._ttl = ttl
        self._refresher: asyncio.Task[None] | None = None
        self._joins = TurnBatch[tuple[str, PresenceEntry], None](self._join_one, self._join_many)
        self._leaves = TurnBatch[tuple[str, str], None](self._leave_one, self._leave_many)

    def start(self) -> None:
        self._refresher = asyncio.create_task(self._refresh(), name="presence")

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self._joins.close()
        await self._leaves.close()
        await self._store.close()

    def tracks(self, channel: str) -> bool:
        return channel.startswith(self._prefixes)

    async def join(self, channel: str, conn: Member) -> None:
        """Enter (or refresh) `conn`; a failure is logged, the next refresh tries again."""
        try:
            await self._joins.read((channel, self._entry(conn)))
        except BrokerError as exc:
            log.warning("presence_join_failed", channel=channel, error=str(exc))
            return
        if conn not in self._membership.local.get(channel, ()):
            # It left while its entry was on the way; its leave, batched apart, may have gone
            # first: leave again, after the entry.
            await self.leave(channel, conn)

    async def _join_one(self, join: tuple[str, PresenceEntry]) -> None:
        await self._store.join(*join, self._ttl)

    async def _join_many(
        self, joins: list[tuple[str, PresenceEntry]]
    ) -> list[BaseException | None]:
        channels: dict[str, list[PresenceEntry]] = {}
        for channel, entry in joins:
            channels.setdefault(channel, []).append(entry)
        await self._store.refresh(channels, self._ttl)  # raises for all: TurnBatch hands it out
        return [None] * len(joins)

    async def _leave_one(self, leave: tuple[str, str]) -> None:
        await self._store.leave(*leave)

    async def _leave_many(self, leaves: list[tuple[str, str]]) -> list[BaseException | None]:
        await self._store.leave_many(leaves)
        return [None] * len(leaves)

    async def leave(self, channel: str, conn: Member) -> None:
        """A failure leaves the entry to expire."""
        with contextlib.suppress(BrokerError):
            await self._leaves.read((channel, conn.client_id))

    async def members(self, channel: str) -> list[PresenceEntry]:
        """Raises BrokerError when the store cannot answer."""
        return await self._store.members(channel)

    async def stats(self, channel: str) -> PresenceStats:
        """Raises BrokerError when the store cannot answer."""
        return await self._store.stats(channel)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            for part in self._parts():
                if not await self._refresh_part(part):
                    break  # the store is down: the rest would fail too (one warning a round)

    def _parts(self) -> Iterator[dict[str, list[PresenceEntry]]]:
        """The node's tracked entries in parts of about REFRESH_BATCH, each built only when
        the one before was sent (a generator): a node with 100,000 entries builds and sends
        them a part per turn, not all in one, and live delivery goes on between the parts."""
        tracked = [c for c, conns in self._membership.local.items() if conns and self.tracks(c)]
        part: dict[str, list[PresenceEntry]] = {}
        size = 0
        for channel in tracked:
            entries = [self._entry(conn) for conn in self._membership.local.get(channel, ())]
            if entries:
                part[channel] = entries
                size += len(entries)
            if size >= REFRESH_BATCH:
                yield part
                part, size = {}, 0
        if part:
            yield part

    async def _refresh_part(self, batch: dict[str, list[PresenceEntry]]) -> bool:
        """Refresh `batch`; False (logged) when the store failed."""
        try:
            await self._store.refresh(batch, self._ttl)
        except BrokerError as exc:  # the entries live until their TTL; the next round tries
            log.warning("presence_refresh_failed", channels=len(batch), error=str(exc))
            return False
        # A connection that left while the refresh was in flight may have been entered again
        # after its leave: take it out (rare, so checked only here).
        local = self._membership.local
        for channel, entries in batch.items():
            stayed = {conn.client_id for conn in local.get(channel, ())}
            for entry in entries:
                if entry.client_id not in stayed:
                    with contextlib.suppress(BrokerError):
                        await self._store.leave(channel, entry.client_id)
        return True

    def _entry(self, conn: Member) -> PresenceEntry:
        return PresenceEntry(conn.client_id, conn.user_id or "", self._node)
