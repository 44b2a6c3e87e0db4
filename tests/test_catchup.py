"""The one catch-up rule of the gateway (node gap repair and connection recovery both use it):
live publications held while history is read are released after it, in order, each once."""

from __future__ import annotations

from gateway.catchup import Catchup, Held
from gateway.protocol import Outgoing
from shared.broker import BrokerPublication, StreamPosition


def live(offset: int | None, epoch: str | None = "e1", channel: str = "session:c") -> Held:
    pub = BrokerPublication(channel, f'{{"n":{offset}}}', offset, epoch)
    return pub, Outgoing(pub.data)


def offsets(items: list[Held]) -> list[int | None]:
    return [pub.offset for pub, _ in items]


def test_history_covers_what_arrived_live_meanwhile() -> None:
    catchup = Catchup()
    catchup.hold()
    for item in (live(4), live(5), live(6), live(7)):
        catchup.held.append(item)  # type: ignore[union-attr]
    released, reached = catchup.release(StreamPosition(5, "e1"))
    assert offsets(released) == [6, 7]
    assert reached
    assert catchup.held is None
    assert (catchup.epoch, catchup.offset) == ("e1", 5)


def test_history_overtook_the_live_stream() -> None:
    # History was read up to 9 while pub/sub had only brought 7: copies of 8 and 9 are still on
    # their way, so the position stays to drop them.
    catchup = Catchup()
    catchup.hold(live(7))
    released, reached = catchup.release(StreamPosition(9, "e1"))
    assert released == []
    assert not reached
    assert catchup.covers(live(8)[0])
    assert catchup.covers(live(9)[0])
    assert not catchup.covers(live(10)[0])


def test_other_epochs_and_bare_publishes_pass_in_arrival_order() -> None:
    catchup = Catchup("e1", 3)
    catchup.hold(live(4))
    for item in (live(None, None), live(1, "e2"), live(5)):
        catchup.held.append(item)  # type: ignore[union-attr]
    released, reached = catchup.release(StreamPosition(4, "e1"))
    assert [(pub.offset, pub.epoch) for pub, _ in released] == [(None, None), (1, "e2"), (5, "e1")]
    assert reached
    assert not catchup.covers(live(None, None)[0])
    assert not catchup.covers(live(2, "e2")[0])


def test_nothing_held_releases_nothing() -> None:
    catchup = Catchup("e1", 2)
    released, reached = catchup.release(StreamPosition(2, "e1"))
    assert (released, reached) == ([], False)
