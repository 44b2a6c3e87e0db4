"""The Broker interface: how messages enter a node. It never touches client sockets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from archmesh_client.idempotency import Idempotency
from archmesh_client.stream import StreamPosition

from shared.broker.reads import ReadCounts


class BrokerPublication(NamedTuple):
    """One message on a channel as the broker hands it to a node (clients receive it as a
    `publication` frame; the client SDKs' own `Publication` is that frame). `data` is the
    event's JSON text, kept as received.

    `offset` and `epoch` are None only for a bare Redis PUBLISH, which bypasses history, and
    for a `signal`: then `data` is a whole client frame (e.g. a join event), sent as is.

    A named tuple, immutable as a frozen dataclass is, and made in a third of its time: one
    is made for every message a node receives.
    """

    channel: str
    data: str
    offset: int | None = None
    epoch: str | None = None
    signal: bool = False


@dataclass(frozen=True, slots=True)
class History:
    """Publications after a position, oldest first, and the channel's current position.

    `complete` is True only when `publications` hold everything from the requested position
    up to `position`: False when that position is no longer covered (trimmed, expired) or
    `limit` cut the list short. The caller must then tell its client recovery failed.
    """

    publications: list[BrokerPublication]
    position: StreamPosition
    complete: bool


Handler = Callable[[BrokerPublication], None]
StateHandler = Callable[[bool], None]


class BrokerError(RuntimeError):
    """The broker's backend could not do what was asked (e.g. Redis unreachable)."""


class Broker(Protocol):
    """Fan-in for one node: publish, follow channels, read history. (Presence is a store of
    its own: `shared.presence`.)"""

    @property
    def connected(self) -> bool:
        """Whether the node currently receives live messages."""
        ...

    @property
    def history_reads(self) -> ReadCounts:
        """History reads asked for and sent to the store (the node's metrics export them)."""
        ...

    async def start(self, on_message: Handler, on_state: StateHandler | None = None) -> None:
        """Begin receiving. `on_message` is called in the event loop and must not block.

        `on_state(False)` is called when live delivery is lost and `on_state(True)` when it
        is back (every channel resubscribed): the caller repairs gaps from history then.
        """
        ...

    async def close(self) -> None: ...

    async def publish(
        self, channel: str, data: str, idempotency: Idempotency | None = None
    ) -> StreamPosition:
        """Append `data` (a JSON object's text) to history and fan it out, atomically.

        With `idempotency`, in the same atomic step: if its key was used on `channel` within
        its window, publish nothing and return that publication's position with
        `duplicate=True`, or raise `IdempotencyConflict` if that one's data differed."""
        ...

    async def publish_many(self, items: list[tuple[str, str]]) -> list[StreamPosition]:
        """`publish` for each (channel, data) in one round trip, in order. A failure raises
        BrokerError; items before it may have been published."""
        ...

    async def signal(self, channel: str, frame: str) -> None:
        """Hand `frame` (a client frame's JSON text) to every node following `channel`, for
        its subscribers as is: live only, never in history, no offset (join/leave events)."""
        ...

    async def subscribe(self, channel: str) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...

    async def history(self, channel: str, since: int, limit: int) -> History:
        """Publications with offset > `since`, at most `limit` of them."""
        ...

    async def position(self, channel: str) -> StreamPosition: ...

    async def ping(self) -> bool:
        """Whether the backend answers now."""
        ...
