"""Join and leave events: on a channel whose prefix is in ARCHMESH_JOIN_LEAVE, every
subscriber, on every node, is told when a connection subscribes to it or leaves it
(unsubscribes, loses it, disconnects) by a `join` or `leave` frame.

The event goes through the broker as a signal: a bare pub/sub message that every node
following the channel hands to its subscribers as is, outside the channel's history and
offsets (recovery neither replays nor counts it). Each event costs one frame per subscriber of
the channel: see the README for what that means on very large channels."""

from __future__ import annotations

from typing import Literal

from gateway.membership import Member
from gateway.protocol import encode
from shared.broker import Broker, BrokerError
from shared.logging import get_logger

log = get_logger(__name__)


class JoinLeave:
    def __init__(self, broker: Broker, prefixes: tuple[str, ...] = ()) -> None:
        self._broker = broker
        self._prefixes = prefixes

    def announces(self, channel: str) -> bool:
        return bool(self._prefixes) and channel.startswith(self._prefixes)

    async def announce(self, kind: Literal["join", "leave"], channel: str, conn: Member) -> None:
        """Best effort: an event the broker cannot take now is logged and lost (presence
        still tells who is there)."""
        frame = encode(
            {"type": kind, "channel": channel, "user_id": conn.user_id, "client_id": conn.client_id}
        )
        try:
            await self._broker.signal(channel, frame)
        except BrokerError as exc:
            log.warning("join_leave_failed", kind=kind, channel=channel, error=str(exc))
