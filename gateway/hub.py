"""The hub registers a node's connections and fans each publication out, in offset order, as one
pre-built frame to every local subscriber of its channel (`Membership` says who they are). When
the broker lost messages (a gap in a channel's offsets, or a reconnect), it reads them back from
history before going on (`Catchup`)."""

from __future__ import annotations

import asyncio
import contextlib

from archmesh_client.backoff import Backoff

from gateway.catchup import Catchup, Held
from gateway.membership import Member, Membership
from gateway.metrics import GatewayMetrics
from gateway.outbox import Flusher
from gateway.protocol import Outgoing, encode, publication_frame
from shared.broker import Broker, BrokerError, BrokerPublication, History, StreamPosition
from shared.logging import get_logger

log = get_logger(__name__)

# A node reads at most this much history to repair one gap; channels keep less by default.
REPAIR_LIMIT = 10_000


class Hub:
    def __init__(self, broker: Broker, metrics: GatewayMetrics, flusher: Flusher) -> None:
        self._broker = broker
        self._metrics = metrics
        self._stats = metrics.stats
        self._flusher = flusher
        self.membership = Membership(
            broker, metrics, on_vacated=self._forget, on_occupied=self._seed
        )
        self._local = self.membership.local  # the fan-out's one lookup per publication
        self._positions: dict[str, Catchup] = {}  # channel -> how far it was fanned out
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections: set[Member] = set()
        self.empty = asyncio.Event()  # set while no client is connected (drain waits on it)
        self.empty.set()

    async def start(self) -> None:
        await self._broker.start(self.dispatch, self._on_broker_state)

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._broker.close()

    # -- registration -------------------------------------------------------------------

    def add(self, conn: Member) -> None:
        self.connections.add(conn)
        self.empty.clear()
        self._metrics.connections.set(len(self.connections))

    def remove(self, conn: Member) -> None:
        self.connections.discard(conn)
        self._metrics.connections.set(len(self.connections))
        if not self.connections:
            self.empty.set()

    async def follow(self, channel: str, member: Member) -> None:
        """Follow `channel` for the node itself (`member`, e.g. the control follower) from its
        current position, read first (retried while the broker is out): whatever is published
        after it reaches `member`, live or, after a gap or a reconnect, from history, even
        before the first publication arrives."""
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            try:
                position = await self._broker.position(channel)
                break
            except BrokerError as exc:
                delay = backoff.next_delay()
                log.warning("follow_failed", channel=channel, error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
        if channel not in self._positions:  # no await from here on: no message in between
            self._positions[channel] = Catchup(position.epoch, position.offset)
        await self.membership.follow(member, channel)
        caught = self._positions.get(channel)
        if caught is not None and caught.held is None:
            # What was published between the read and the subscription taking effect.
            self._start_repair(channel, caught, None)

    # -- fan-out ------------------------------------------------------------------------

    def dispatch(self, pub: BrokerPublication, frame: Outgoing | None = None) -> None:
        """Called by the broker for every message (and by gap repair, with what history had
        and what was held meanwhile); never awaits a socket."""
        conns = self._local.get(pub.channel)
        if not conns:
            return
        stats = self._stats
        stats.publications += 1
        if pub.offset is not None and pub.epoch is not None:
            position = self._positions.get(pub.channel)
            if position is None:
                self._positions[pub.channel] = Catchup(pub.epoch, pub.offset)
            elif position.held is not None:  # history is being read: in order, after it
                position.held.append(_framed(pub, frame))
                return
            elif position.epoch != pub.epoch:
                position.epoch, position.offset = pub.epoch, pub.offset
            elif pub.offset <= position.offset:
                return  # already delivered (a repair overlapped live delivery)
            elif pub.offset > position.offset + 1:
                self._start_repair(pub.channel, position, _framed(pub, frame))
                return
            else:
                position.offset = pub.offset
        elif pub.signal and frame is None:  # a join/leave event: its data is the frame
            frame = Outgoing(pub.data)
        if frame is None:
            frame = Outgoing(publication_frame(pub))
        flusher = self._flusher
        flusher.timed()
        for conn in conns:
            conn.deliver(pub, frame)
        flusher.fanned_out()
        stats.deliveries += len(conns)
        stats.bytes_out += len(frame.wire) * len(conns)

    def passed(self, channel: str, position: StreamPosition) -> bool:
        """Whether live delivery of `channel` is at or past `position`: no publication at or
        before it can still reach a subscriber live (the fan-out drops those it passed)."""
        fanned = self._positions.get(channel)
        return (
            fanned is not None
            and fanned.held is None
            and fanned.epoch == position.epoch
            and fanned.offset >= position.offset
        )

    def _seed(self, channel: str, position: StreamPosition) -> None:
        """The channel's position, read by its first local subscriber just after the node
        subscribed to it: gap repair after a reconnect covers it from the start, not only once
        a publication arrived. A publication that reached the fan-out first has set the position
        already (then this one is ignored). The subscribers that came meanwhile read theirs
        after this read (`Membership.join`): what the fan-out drops as at or before it, none of
        them is owed."""
        if channel not in self._positions:
            self._positions[channel] = Catchup(position.epoch, position.offset)

    def _forget(self, channel: str) -> None:
        """No local subscriber is left: a later one starts from the channel's position then."""
        self._positions.pop(channel, None)

    # -- gap repair ---------------------------------------------------------------------

    def _on_broker_state(self, connected: bool) -> None:
        self._metrics.broker_state.set(1 if connected else 0)
        if not connected:
            return
        self._metrics.broker_reconnects.inc()
        # Messages published while the link was down never reached us: read them back.
        for channel, position in list(self._positions.items()):
            if position.held is None:
                self._start_repair(channel, position, None)

    def _start_repair(self, channel: str, position: Catchup, first: Held | None) -> None:
        epoch, since = position.epoch, position.offset
        position.hold(first)  # live messages are held meanwhile, so nothing is skipped
        task = asyncio.create_task(
            self._repair(channel, position, epoch, since), name=f"repair {channel}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _repair(self, channel: str, position: Catchup, epoch: str, since: int) -> None:
        try:
            history = await self._read_back(channel, position, since)
        except Exception:
            log.exception("gap_repair_crashed", channel=channel)
            position.release(StreamPosition(since, epoch))  # the next message tries again
            return
        if history is None:
            return  # nobody is left to repair for
        if history.position.epoch == epoch and history.complete:
            missed = history.publications
            # Held messages follow what history had; dispatch drops those it covered.
            held, _ = position.release(StreamPosition(since, epoch))
            if missed:
                self._metrics.gap_repairs.labels(outcome="repaired").inc()
                log.info("gap_repaired", channel=channel, since=since, count=len(missed))
        else:
            missed = []
            held, _ = position.release(history.position)
            self._metrics.gap_repairs.labels(outcome="history_lost").inc()
            self._history_lost(channel, since, history.position)
        for pub in missed:
            self.dispatch(pub)
        for pub, frame in held:
            self.dispatch(pub, frame)

    async def _read_back(self, channel: str, position: Catchup, since: int) -> History | None:
        """History after `since`, retried while the broker is out; None once the channel has no
        local subscriber (`position` is no longer its position)."""
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            try:
                history = await self._broker.history(channel, since, REPAIR_LIMIT)
            except BrokerError as exc:
                if self._positions.get(channel) is not position:
                    return None
                delay = backoff.next_delay()
                log.warning("gap_repair_failed", channel=channel, error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                continue
            return history if self._positions.get(channel) is position else None

    def _history_lost(self, channel: str, since: int, position: StreamPosition) -> None:
        """The gap cannot be filled: tell every local subscriber where the channel now stands,
        as an unasked `subscribed` with `recovered: false`, so it reloads its state."""
        log.warning("gap_not_repairable", channel=channel, since=since, epoch=position.epoch)
        reply = {
            "type": "subscribed",
            "channel": channel,
            "offset": position.offset,
            "epoch": position.epoch,
            "recovered": False,
            "reason": "history_lost",
        }
        frame = Outgoing(encode(reply))
        for conn in self._local.get(channel, ()):
            conn.push(frame)


def _framed(pub: BrokerPublication, frame: Outgoing | None) -> Held:
    return pub, frame if frame is not None else Outgoing(publication_frame(pub))
