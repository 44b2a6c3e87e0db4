"""What a connection needs from its node, and nothing more: settings and token checks, the
channels it joins (membership, presence), history reads, admission (revocations, the per-user
limit), the shared write scheduling, counters and expiry timer. A connection never reaches the
hub or the broker: the hub registers it and fans publications out to it, that is all."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.types import Send

from gateway.admission import Admission
from gateway.catchup import RECOVERY_LIMIT
from gateway.expiry import Expiries
from gateway.handshake_gate import HandshakeGate
from gateway.join_leave import JoinLeave
from gateway.membership import Member, Membership
from gateway.metrics import FanoutStats, GatewayMetrics
from gateway.outbox import Flusher, Outbox, open_outbox
from gateway.presence import PresenceTracker
from gateway.protocol import Since
from shared.broker import History, StreamPosition
from shared.settings import Settings
from shared.tokens import TokenVerifier

HistoryRead = Callable[[str, int, int], Awaitable[History]]  # (channel, since, limit)


@dataclass(frozen=True, slots=True)
class ConnectionContext:
    node: str
    settings: Settings
    verifier: TokenVerifier
    metrics: GatewayMetrics
    stats: FanoutStats
    flusher: Flusher
    expiries: Expiries
    membership: Membership
    presence: PresenceTracker
    join_leave: JoinLeave
    history: HistoryRead
    admission: Admission  # revocations and the per-user limit, at connect, refresh, subscribe
    live_passed: Callable[[str, StreamPosition], bool]  # the hub's fan-out is past a position
    # Connects and recovering subscribes in progress at once: in a reconnect storm the rest
    # wait their turn, fewer while the loop runs late, so live delivery keeps its pace.
    handshakes: HandshakeGate

    def open_outbox(self, send: Send) -> Outbox:
        return open_outbox(send, self.settings.client_queue_bytes, self.flusher)

    async def join(self, member: Member, channel: str, since: Since | None) -> History:
        """A WebSocket or SSE client joins a channel: the hub's membership, which reads the
        channel's position and, with `since`, what was published after it (at most
        RECOVERY_LIMIT: what a subscribe or a connect recovers from); then presence and
        join/leave where the channel has them. The joiner gets its own `join` too, after its
        `subscribed` (its publications are held until then)."""
        limit = RECOVERY_LIMIT if since else 0
        history = await self.membership.join(
            member, channel, lambda: self.history(channel, since.offset if since else 0, limit)
        )
        if self.presence.tracks(channel):
            await self.presence.join(channel, member)
        if self.join_leave.announces(channel):
            await self.join_leave.announce("join", channel, member)
        return history

    async def leave(self, member: Member, channel: str) -> None:
        """The reverse of `join`; nothing if the member was not in the channel."""
        if not await self.membership.leave(member, channel):
            return
        if self.presence.tracks(channel):
            await self.presence.leave(channel, member)
        if self.join_leave.announces(channel):
            await self.join_leave.announce("leave", channel, member)
