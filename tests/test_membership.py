"""A channel's first local member reads where it stands after the node subscribed to it, and that
one read is the node's position too (gateway/membership.py): a member that joins meanwhile
reads after it, so the fan-out never drops a publication a member was not sent."""

from __future__ import annotations

import asyncio

from gateway.membership import Membership
from gateway.metrics import GatewayMetrics
from shared.broker import BrokerPublication, History, StreamPosition
from shared.broker.memory import MemoryBroker
from tests.members import IdleMember


async def test_the_first_members_read_follows_the_subscription_and_seeds_the_node() -> None:
    broker = MemoryBroker()
    live: list[BrokerPublication] = []
    await broker.start(live.append)
    seeded: list[tuple[str, StreamPosition]] = []
    membership = Membership(
        broker,
        GatewayMetrics(),
        on_vacated=lambda channel: None,
        on_occupied=lambda channel, position: seeded.append((channel, position)),
    )
    events: list[str] = []
    release = asyncio.Event()
    channel = "session:seeded"

    async def first_read() -> History:
        # Published as the first member reads: the node is subscribed already, so it is live.
        await broker.publish(channel, '{"n": 1}')
        events.append("first read")
        await release.wait()
        history = await broker.history(channel, 0, 0)
        events.append("first answered")
        return history

    async def second_read() -> History:
        events.append("second read")
        return await broker.history(channel, 0, 0)

    first, second = IdleMember("a"), IdleMember("b")
    joining = asyncio.ensure_future(membership.join(first, channel, first_read))
    while "first read" not in events:
        await asyncio.sleep(0)
    waiting = asyncio.ensure_future(membership.join(second, channel, second_read))
    await asyncio.sleep(0.05)
    # The second member gets live publications from now on (its catch-up holds them) but
    # reads only after the first read is done.
    assert events == ["first read"]
    assert membership.local[channel] == {first, second}
    assert [pub.offset for pub in live] == [1]
    release.set()
    one, two = await asyncio.gather(joining, waiting)
    assert events == ["first read", "first answered", "second read"]
    assert seeded == [(channel, one.position)]  # one read: the member's and the node's
    assert (one.position.offset, two.position.offset) == (1, 1)
    # A later member reads at once, and the node keeps its position.
    third = await membership.join(IdleMember("c"), channel, second_read)
    assert (third.position.offset, len(seeded)) == (1, 1)


async def test_a_channel_left_and_joined_again_during_the_first_read_is_seeded_by_the_new_one() -> (
    None
):
    broker = MemoryBroker()
    await broker.start(lambda pub: None)
    seeded: list[tuple[str, StreamPosition]] = []
    vacated: list[str] = []
    membership = Membership(
        broker,
        GatewayMetrics(),
        on_vacated=vacated.append,
        on_occupied=lambda channel, position: seeded.append((channel, position)),
    )
    channel = "session:again"
    release = asyncio.Event()

    async def slow_read() -> History:
        await release.wait()
        return History([], StreamPosition(7, "old"), True)

    async def read() -> History:
        return History([], StreamPosition(9, "new"), True)

    gone = IdleMember("gone")
    joining = asyncio.ensure_future(membership.join(gone, channel, slow_read))
    await asyncio.sleep(0.01)
    assert await membership.leave(gone, channel)
    assert vacated == [channel]
    await membership.join(IdleMember("next"), channel, read)
    release.set()
    await joining
    # Only the member that holds the channel now seeded it: the old read is not the node's.
    assert seeded == [(channel, StreamPosition(9, "new"))]
