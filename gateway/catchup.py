"""A position on one channel, plus the live publications held back while history after it is
read: the one way this node catches up without skipping or repeating a publication.

Two consumers use it. The hub follows every channel's position and, when the broker lost
messages (a gap, or a reconnect), reads them back from history (gap repair). A connection that
subscribes reads history (recovery with `since`, or just the current position). Either way live
publications keep arriving during the read, possibly overtaken by it (history and pub/sub are
two Redis connections). They are held, and once history through a position has been delivered,
`release` hands back the held ones that position does not cover: in order, each once.
"""

from __future__ import annotations

from typing import Any

from gateway.metrics import GatewayMetrics
from gateway.protocol import Outgoing, Since
from shared.broker import BrokerPublication, History, StreamPosition

Held = tuple[BrokerPublication, Outgoing]
# A client recovering with `since` gets at most this many missed publications from one read.
RECOVERY_LIMIT = 10_000


class Catchup:
    # Slots: one per channel on a node, and one per connection while it subscribes.
    __slots__ = ("epoch", "held", "offset")

    def __init__(self, epoch: str = "", offset: int = 0) -> None:
        self.epoch = epoch  # "" until known: no publication has it
        self.offset = offset
        self.held: list[Held] | None = None  # a list while history is read

    def hold(self, first: Held | None = None) -> None:
        """History is about to be read: hold live publications (from `first` on) until
        `release`."""
        self.held = [] if first is None else [first]

    def covers(self, pub: BrokerPublication) -> bool:
        """Whether `pub` is at or before the position, in its epoch: delivered already."""
        return pub.offset is not None and pub.epoch == self.epoch and pub.offset <= self.offset

    def release(self, position: StreamPosition) -> tuple[list[Held], bool]:
        """Everything through `position` has been (or is about to be) delivered from history:
        move there, stop holding, and return the held publications that `position` does not
        cover, in arrival order, with whether the live stream had already reached `position`.
        If it had not, live copies of what history delivered may still be on their way: keep
        the position and drop what it `covers`."""
        held, self.held = self.held or [], None
        self.epoch, self.offset = position.epoch, position.offset
        released: list[Held] = []
        reached = False
        for item in held:
            pub = item[0]
            if pub.offset is not None and pub.epoch == position.epoch:
                reached = reached or pub.offset >= position.offset
                if pub.offset <= position.offset:
                    continue
            released.append(item)
        return released, reached


def recovery_outcome(since: Since, complete: bool, position: StreamPosition) -> tuple[bool, str]:
    """Whether a client at `since` can be brought up to `position` from a history read
    (`complete`: it reached back to `since`), and if not, the reason it is told."""
    if since.epoch != position.epoch and not (since.offset == 0 and not since.epoch):
        return False, "epoch_changed"
    if since.offset > position.offset:
        return False, "unknown_position"
    if not complete:
        return False, "history_trimmed"
    return True, ""


def recover(
    reply: dict[str, Any], since: Since | None, history: History, metrics: GatewayMetrics
) -> tuple[bool, list[BrokerPublication]]:
    """Tell `reply` (`subscribed`, or `connected` for the own channel) the channel's position
    and, with `since`, whether what was missed is recovered (or the `reason` it is not), and
    count the outcome: whether it was recovered, and what was missed (to send after `reply`)."""
    position = history.position
    reply["offset"], reply["epoch"] = position.offset, position.epoch
    if since is None:
        return False, []
    recovered, reason = recovery_outcome(since, history.complete, position)
    metrics.recoveries.labels(outcome=reason or "recovered").inc()
    reply["recovered"] = recovered
    if not recovered:
        reply["reason"] = reason
        return False, []
    return True, history.publications
