"""Which local connections follow which channel, and which channels each connection follows:
both maps live here and only here change them. The broker subscriptions follow from them by
reference counting: the first local subscriber of a channel subscribes the node to it, the last
one leaving unsubscribes it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Set
from typing import Protocol

from gateway.metrics import GatewayMetrics
from gateway.protocol import CloseCode, Outgoing
from shared.broker import Broker, BrokerPublication, History, StreamPosition


class Member(Protocol):
    """What the node's registries (membership, hub, presence) need of a client connection
    (gateway.connection.Member), so that they never import it."""

    client_id: str
    user_id: str | None

    def deliver(self, pub: BrokerPublication, frame: Outgoing) -> None: ...

    def push(self, frame: Outgoing) -> None: ...

    def close(self, code: CloseCode) -> None: ...


_NONE: frozenset[str] = frozenset()


class Membership:
    def __init__(
        self,
        broker: Broker,
        metrics: GatewayMetrics,
        on_vacated: Callable[[str], None],
        on_occupied: Callable[[str, StreamPosition], None],
    ) -> None:
        """`on_vacated(channel)` is called when a channel's last local subscriber left;
        `on_occupied(channel, position)` when its first one came, with the channel's position
        read just after the node subscribed to it."""
        self._broker = broker
        self._metrics = metrics
        self._on_vacated = on_vacated
        self._on_occupied = on_occupied
        # channel -> its local connections. Read (never written) by the hub's fan-out and the
        # presence refresh; a channel is here only while it has one.
        self.local: dict[str, set[Member]] = {}
        self._channels_of: dict[Member, set[str]] = {}  # only connections with a channel
        self._internal: set[str] = set()  # channels only the node itself follows
        # channel -> set once its first local member's read is done (see `join`)
        self._occupying: dict[str, asyncio.Event] = {}

    def channels(self, conn: Member) -> Set[str]:
        return self._channels_of.get(conn, _NONE)

    async def join(
        self, conn: Member, channel: str, read: Callable[[], Awaitable[History]]
    ) -> History:
        """Add `conn` to `channel`, then `read()` where the channel stands (and what `conn`
        missed) after the node subscribed to it: whatever is published from then on reaches
        `conn` live, or is in that read. The channel's first local member's read is the node's
        too (`on_occupied`): one read, not one before subscribing and another after. A member
        that joins meanwhile reads only once that read is done, so none is told a position
        older than the node's (its fan-out drops what it already passed)."""
        channels = self._channels_of.get(conn)
        if channels is None:
            channels = self._channels_of[conn] = set()
        channels.add(channel)
        self._metrics.subscriptions.inc()
        conns = self.local.get(channel)
        if conns is not None:
            conns.add(conn)
            occupying = self._occupying.get(channel)
            if occupying is not None:
                await occupying.wait()
            return await read()
        self.local[channel] = {conn}
        self._count_channels()
        occupying = self._occupying[channel] = asyncio.Event()
        try:
            await self._broker.subscribe(channel)
            history = await read()
        finally:
            ours = self._occupying.get(channel) is occupying  # not left and joined again
            if ours:
                del self._occupying[channel]
            occupying.set()
        if ours and channel in self.local:
            self._on_occupied(channel, history.position)
        return history

    async def follow(self, member: Member, channel: str) -> None:
        """Make the node itself a member of `channel` (the control stream): fanned out to and
        repaired like a client's channel, not counted as a client's subscription, never left."""
        self._internal.add(channel)
        self.local.setdefault(channel, set()).add(member)
        await self._broker.subscribe(channel)

    def internal(self, channel: str) -> bool:
        """Followed by the node itself (`follow`), not by a client."""
        return channel in self._internal

    def client_channels(self) -> int:
        """Channels with a local client subscriber."""
        return len(self.local) - len(self._internal)

    def _count_channels(self) -> None:
        self._metrics.channels.set(self.client_channels())

    async def leave(self, conn: Member, channel: str) -> bool:
        """Whether `conn` was a member of `channel` (and now is not)."""
        channels = self._channels_of.get(conn)
        if channels is not None:
            channels.discard(channel)
            if not channels:
                del self._channels_of[conn]
        conns = self.local.get(channel)
        if conns is None or conn not in conns:
            return False
        conns.discard(conn)
        self._metrics.subscriptions.dec()
        if not conns:
            del self.local[channel]
            self._on_vacated(channel)
            self._count_channels()
            await self._broker.unsubscribe(channel)
        return True
