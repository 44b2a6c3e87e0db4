"""This node's part of presence: the connections subscribed here to a tracked channel are
entered in the presence store, refreshed every third of the TTL while they stay, and removed
when they leave. A node that dies stops refreshing, and its entries expire."""

from __future__ import annotations

import asyncio
import contextlib

from gateway.membership import Member, Membership
from shared.broker import BrokerError
from shared.logging import get_logger
from shared.presence import PresenceEntry, PresenceStore

log = get_logger(__name__)


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

    def start(self) -> None:
        self._refresher = asyncio.create_task(self._refresh(), name="presence")

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self._store.close()

    def tracks(self, channel: str) -> bool:
        return channel.startswith(self._prefixes)

    async def join(self, channel: str, conn: Member) -> None:
        """Enter (or refresh) `conn`; a failure is logged, the next refresh tries again."""
        entry = PresenceEntry(conn.client_id, conn.user_id or "", self._node)
        try:
            await self._store.join(channel, entry, self._ttl)
        except BrokerError as exc:
            log.warning("presence_join_failed", channel=channel, error=str(exc))

    async def leave(self, channel: str, conn: Member) -> None:
        """A failure leaves the entry to expire."""
        with contextlib.suppress(BrokerError):
            await self._store.leave(channel, conn.client_id)

    async def members(self, channel: str) -> list[PresenceEntry]:
        """Raises BrokerError when the store cannot answer."""
        return await self._store.members(channel)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            for channel, conns in list(self._membership.local.items()):
                if self.tracks(channel):
                    for conn in list(conns):
                        await self.join(channel, conn)
