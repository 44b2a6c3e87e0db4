"""The subscriptions of one connection that a subscription token granted, each until that
token's `exp`: an entry on the node's shared expiry timer per channel (no task, no timer handle
of its own). `sub_refresh` moves an entry to the new token's `exp`; an entry that comes due
ends its subscription unless the connection's claims allow the channel by then."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.expiry import Expiries, Expiry


class SubscriptionGrants:
    # Slots, and made only for a connection that subscribes with a token.
    __slots__ = ("_entries", "_expiries")

    def __init__(self, expiries: Expiries) -> None:
        self._expiries = expiries
        self._entries: dict[str, Expiry] = {}

    def grant(self, channel: str, until: float, on_due: Callable[[str], None]) -> None:
        """Hold `channel` until wall-clock time `until`, then call `on_due(channel)`; replaces
        any earlier grant of it."""
        self.drop(channel)
        self._entries[channel] = self._expiries.add(until, lambda: on_due(channel))

    def holds(self, channel: str) -> bool:
        return channel in self._entries

    def drop(self, channel: str) -> None:
        entry = self._entries.pop(channel, None)
        if entry is not None:
            entry.cancel()

    def take_due(self, channel: str) -> bool:
        """Whether `channel`'s grant has come due (it is then dropped). False when it was
        dropped or renewed since its entry fired."""
        entry = self._entries.get(channel)
        if entry is None or entry.at > asyncio.get_running_loop().time():
            return False
        del self._entries[channel]
        return True

    def clear(self) -> None:
        for entry in self._entries.values():
            entry.cancel()
        self._entries.clear()
