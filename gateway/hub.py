"""The hub owns channel -> local connections, reference-counts broker subscriptions, and fans
each publication out as one pre-built frame. It also repairs gaps after a broker hiccup."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from gateway.expiry import Expiries
from gateway.metrics import GatewayMetrics
from gateway.outbox import Flusher
from gateway.protocol import Outgoing, encode, publication_frame
from shared.backoff import Backoff
from shared.broker import Broker, BrokerError, Publication, StreamPosition
from shared.logging import get_logger
from shared.presence import PresenceEntry, PresenceStore

if TYPE_CHECKING:
    from gateway.connection import Connection

log = get_logger(__name__)

# A node reads at most this much history to repair one gap; channels keep less by default.
REPAIR_LIMIT = 10_000


class Hub:
    def __init__(
        self,
        broker: Broker,
        presence: PresenceStore,
        metrics: GatewayMetrics,
        node: str,
        presence_prefixes: tuple[str, ...] = ("session:",),
        presence_ttl: float = 30.0,
    ) -> None:
        self.broker = broker
        self.presence = presence
        self.node = node
        self._metrics = metrics
        self.flusher = Flusher(metrics.fanout_seconds.observe)
        self.stats = metrics.stats
        self.expiries = Expiries()
        self._subs: dict[str, set[Connection]] = {}
        self._last: dict[str, tuple[str, int]] = {}
        self._repairing: dict[str, list[Publication]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections: set[Connection] = set()
        self.empty = asyncio.Event()  # set while no client is connected (drain waits on it)
        self.empty.set()
        self.presence_prefixes = presence_prefixes
        self.presence_ttl = presence_ttl
        self._presence_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.broker.start(self.dispatch, self._on_broker_state)
        self._presence_task = asyncio.create_task(self._refresh_presence(), name="presence")

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._presence_task] if self._presence_task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.expiries.stop()
        await self.broker.close()
        await self.presence.close()

    # -- membership ---------------------------------------------------------------------

    def add(self, conn: Connection) -> None:
        self.connections.add(conn)
        self.empty.clear()
        self._metrics.connections.set(len(self.connections))

    async def remove(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self._metrics.connections.set(len(self.connections))
        if not self.connections:
            self.empty.set()
        for channel in list(conn.channels):
            await self.unsubscribe(conn, channel)

    async def subscribe(self, conn: Connection, channel: str) -> None:
        conns = self._subs.get(channel)
        conn.channels.add(channel)
        self._metrics.subscriptions.inc()
        if conns is None:
            self._subs[channel] = {conn}
            self._metrics.channels.set(len(self._subs))
            await self.broker.subscribe(channel)
        else:
            conns.add(conn)
        if self.tracks_presence(channel):
            await self._presence_join(channel, conn)

    async def unsubscribe(self, conn: Connection, channel: str) -> None:
        conn.channels.discard(channel)
        conns = self._subs.get(channel)
        if conns is None or conn not in conns:
            return
        conns.discard(conn)
        self._metrics.subscriptions.dec()
        if not conns:
            del self._subs[channel]
            self._last.pop(channel, None)
            self._metrics.channels.set(len(self._subs))
            await self.broker.unsubscribe(channel)
        if self.tracks_presence(channel):
            with contextlib.suppress(BrokerError):
                await self.presence.leave(channel, conn.client_id)

    # -- fan-out ------------------------------------------------------------------------

    def dispatch(self, pub: Publication) -> None:
        """Called by the broker for every message; never awaits a socket."""
        conns = self._subs.get(pub.channel)
        if not conns:
            return
        stats = self.stats
        stats.publications += 1
        if pub.offset is not None and pub.epoch is not None:
            buffered = self._repairing.get(pub.channel)
            if buffered is not None:
                buffered.append(pub)
                return
            last = self._last.get(pub.channel)
            if last is not None and last[0] == pub.epoch:
                if pub.offset <= last[1]:
                    return  # already delivered (a repair overlapped live delivery)
                if pub.offset > last[1] + 1:
                    self._start_repair(pub.channel, last[0], last[1], [pub])
                    return
            self._last[pub.channel] = (pub.epoch, pub.offset)
        frame = Outgoing(publication_frame(pub))
        flusher = self.flusher
        flusher.timed()
        for conn in conns:
            conn.deliver(pub, frame)
        flusher.fanned_out()
        stats.deliveries += len(conns)
        stats.bytes_out += len(frame.wire) * len(conns)

    def _on_broker_state(self, connected: bool) -> None:
        self._metrics.broker_state.set(1 if connected else 0)
        if not connected:
            return
        self._metrics.broker_reconnects.inc()
        # Messages published while the link was down never reached us: read them back.
        for channel, (epoch, offset) in list(self._last.items()):
            if channel not in self._repairing:
                self._start_repair(channel, epoch, offset, [])

    def _start_repair(
        self, channel: str, epoch: str, since: int, pending: list[Publication]
    ) -> None:
        self._repairing[channel] = pending
        task = asyncio.create_task(self._repair(channel, epoch, since), name=f"repair {channel}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _repair(self, channel: str, epoch: str, since: int) -> None:
        missed: list[Publication] = []
        lost: StreamPosition | None = None
        backoff = Backoff(base=0.1, cap=5.0)
        try:
            while True:  # live messages keep buffering meanwhile, so nothing is skipped
                try:
                    history = await self.broker.history(channel, since, REPAIR_LIMIT)
                    break
                except BrokerError as exc:
                    if channel not in self._subs:
                        return  # nobody left to repair for
                    delay = backoff.next_delay()
                    log.warning(
                        "gap_repair_failed", channel=channel, error=str(exc), retry_in=delay
                    )
                    await asyncio.sleep(delay)
            if history.position.epoch == epoch and history.complete:
                missed = history.publications
            else:
                lost = history.position
        finally:
            pending = self._repairing.pop(channel, [])
        if lost is not None:
            self._metrics.gap_repairs.labels(outcome="history_lost").inc()
            self._history_lost(channel, since, lost)
        elif missed:
            self._metrics.gap_repairs.labels(outcome="repaired").inc()
            log.info("gap_repaired", channel=channel, since=since, count=len(missed))
        for pub in sorted([*missed, *pending], key=lambda p: (p.epoch != epoch, p.offset or 0)):
            self.dispatch(pub)

    def _history_lost(self, channel: str, since: int, position: StreamPosition) -> None:
        """The gap cannot be filled: tell every local subscriber where the channel now stands,
        as an unasked `subscribed` with `recovered: false`, so it reloads its state."""
        log.warning("gap_not_repairable", channel=channel, since=since, epoch=position.epoch)
        self._last[channel] = (position.epoch, position.offset)
        reply = {
            "type": "subscribed",
            "channel": channel,
            "offset": position.offset,
            "epoch": position.epoch,
            "recovered": False,
            "reason": "history_lost",
        }
        frame = Outgoing(encode(reply))
        for conn in self._subs.get(channel, ()):
            conn.push(frame)

    # -- presence -----------------------------------------------------------------------

    def tracks_presence(self, channel: str) -> bool:
        return channel.startswith(self.presence_prefixes)

    async def _presence_join(self, channel: str, conn: Connection) -> None:
        entry = PresenceEntry(conn.client_id, conn.user_id or "", self.node)
        try:
            await self.presence.join(channel, entry, self.presence_ttl)
        except BrokerError as exc:
            log.warning("presence_join_failed", channel=channel, error=str(exc))

    async def _refresh_presence(self) -> None:
        while True:
            await asyncio.sleep(self.presence_ttl / 3)
            for channel, conns in list(self._subs.items()):
                if self.tracks_presence(channel):
                    for conn in list(conns):
                        await self._presence_join(channel, conn)
