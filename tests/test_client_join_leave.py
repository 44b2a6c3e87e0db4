"""The Python SDK surfaces join and leave events (ARCHMESH_JOIN_LEAVE) as `Joined`/`Left`
items of `publications()`, against a real gateway process: its own join, another client's join
and leave, and nothing once it unsubscribed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from archmesh_client.realtime import Item, Joined, Left, Publication, RealtimeClient

from tests.servers import GatewayProcess
from tests.wsclient import token

pytestmark = pytest.mark.slow


async def next_item(items: AsyncIterator[Item]) -> Item:
    return await asyncio.wait_for(anext(items), 5)


async def test_joined_and_left_items(gateways: list[GatewayProcess]) -> None:
    node = GatewayProcess("", ARCHMESH_JOIN_LEAVE="session:").start()  # the memory broker
    gateways.append(node)
    fay = RealtimeClient(node.ws, token("fay", ["team"]))
    gus = RealtimeClient(node.ws, token("gus", ["team"]))
    try:
        items = fay.publications()
        me = await fay.connect()
        await fay.subscribe("session:team")
        assert await next_item(items) == Joined("session:team", "fay", me.client_id)
        him = await gus.connect()
        await gus.subscribe("session:team")
        assert await next_item(items) == Joined("session:team", "gus", him.client_id)
        await gus.unsubscribe("session:team")
        assert await next_item(items) == Left("session:team", "gus", him.client_id)
        node.publish("session:team", {"type": "t"})  # publications go on between the events
        assert isinstance(await next_item(items), Publication)
        await gus.subscribe("session:team")
        assert await next_item(items) == Joined("session:team", "gus", him.client_id)
        await gus.close()
        assert await next_item(items) == Left("session:team", "gus", him.client_id)
        await fay.unsubscribe("session:team")
        hal = RealtimeClient(node.ws, token("hal", ["team"]))
        await hal.connect()
        await hal.subscribe("session:team")
        await hal.close()
        with pytest.raises(TimeoutError):  # unsubscribed: no more events
            await asyncio.wait_for(anext(items), 0.5)
    finally:
        await gus.close()
        await fay.close()
