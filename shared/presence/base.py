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


@dataclass(frozen=True, slots=True)
class PresenceStats:
    """How many clients, and how many distinct users, are present in a channel."""

    connections: int
    users: int


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

    async def leave_many(self, leaves: Sequence[tuple[str, str]]) -> None:
        """`leave` for every (channel, client id) at once: a burst of disconnects (a deploy,
        a storm's failed attempts) in one round trip to each backend server."""
        ...

    async def members(self, channel: str) -> list[PresenceEntry]:
        """The entries of `channel` whose time has not run out."""
        ...

    async def stats(self, channel: str) -> PresenceStats:
        """The counts of `members`, without listing them: O(1) (after dropping, once, the
        entries whose time ran out), however many clients the channel has."""
        ...

    async def close(self) -> None: ...
