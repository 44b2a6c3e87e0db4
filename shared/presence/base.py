"""The PresenceStore interface: who is in a channel, across every node.

Kept apart from the Broker (as centrifuge keeps a PresenceManager apart from its Broker):
presence is state with expiry, not message flow, and a node can lose one without the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PresenceEntry:
    client_id: str
    user_id: str
    node: str


class PresenceStore(Protocol):
    """Entries per channel, each expiring unless refreshed. Failures raise BrokerError (the
    backend is the broker's: the same Redis, the same outage)."""

    async def join(self, channel: str, entry: PresenceEntry, ttl: float) -> None:
        """Add or refresh `entry`; it vanishes `ttl` seconds after its last refresh."""
        ...

    async def refresh(self, channels: Mapping[str, Sequence[PresenceEntry]], ttl: float) -> None:
        """`join` for every entry of every channel at once: a node's periodic refresh, in one
        round trip to each backend server (not one per subscription)."""
        ...

    async def leave(self, channel: str, client_id: str) -> None: ...

    async def members(self, channel: str) -> list[PresenceEntry]:
        """The entries of `channel` whose time has not run out."""
        ...

    async def close(self) -> None: ...
