"""What a connection needs from its node, and nothing more: settings and token checks, the
channels it joins (membership, presence), history reads, admission (revocations, the per-user
limit), the shared write scheduling, counters and expiry timer. A connection never reaches the
hub or the broker: the hub registers it and fans publications out to it, that is all."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.types import Send

from gateway.admission import Admission
from gateway.expiry import Expiries
from gateway.join_leave import JoinLeave
from gateway.membership import Membership
from gateway.metrics import FanoutStats, GatewayMetrics
from gateway.outbox import Flusher, Outbox, open_outbox
from gateway.presence import PresenceTracker
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

    def open_outbox(self, send: Send) -> Outbox:
        return open_outbox(send, self.settings.client_queue_bytes, self.flusher)
