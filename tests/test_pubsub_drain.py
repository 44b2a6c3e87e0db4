"""The pub/sub reader hands a burst's publications to the hub straight from hiredis' buffer
(shared/broker/link.py): in order, each once, with the fast path in use on the installed
redis-py (an upgrade that moves its internals would silently lose it otherwise)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from archmesh_client.channels import pubsub_name

from shared.broker import BrokerPublication
from shared.broker.link import _buffered_replies
from shared.broker.redis import RedisBroker
from tests.servers import RedisServer


def test_a_parser_that_is_not_hiredis_takes_the_plain_path() -> None:
    assert _buffered_replies(object()) is None


async def test_a_burst_arrives_in_order_through_the_buffered_path(
    redis_server: RedisServer,
) -> None:
    got: list[BrokerPublication] = []
    arrived = asyncio.Event()
    total = 2000

    def on_message(pub: BrokerPublication) -> None:
        got.append(pub)
        if len(got) == total:
            arrived.set()

    broker = RedisBroker(redis_server.url)
    await broker.start(on_message)
    try:
        async with asyncio.timeout(10):
            while not broker.connected:
                await asyncio.sleep(0.01)
        links = list(broker._links.values())
        assert links
        assert all(_buffered_replies(link._pubsub) is not None for link in links)
        calls = [0]
        for link in links:
            original = link._pubsub.get_message

            async def counted(*args: Any, _original: Any = original, **kw: Any) -> Any:
                calls[0] += 1
                return await _original(*args, **kw)

            link._pubsub.get_message = counted
        await broker.subscribe("session:burst")
        name = pubsub_name("session:burst")
        async with asyncio.timeout(10):  # the subscription is in effect before the burst
            while redis_server.client().pubsub_numsub(name)[0][1] != 1:
                await asyncio.sleep(0.01)
        items = [("session:burst", orjson.dumps({"n": n}).decode()) for n in range(total)]
        await broker.publish_many(items)  # one pipeline: the replies arrive in bursts
        await asyncio.wait_for(arrived.wait(), 10)
        assert [p.offset for p in got] == list(range(1, total + 1))
        assert [orjson.loads(p.data)["n"] for p in got] == list(range(total))
        assert calls[0] < total  # most came straight from the buffer, not one call each
    finally:
        await broker.close()
