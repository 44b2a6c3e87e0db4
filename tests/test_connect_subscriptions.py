"""A connect frame's subscriptions are taken side by side (gateway/connection.py
`_subscribe_all`): each channel's replies and what it missed must still arrive exactly once
and in offset order, the subscription limit must still be applied in the order the channels
were named, and a channel named twice is subscribed twice, as two frames would be."""

from __future__ import annotations

import asyncio

import pytest
from archmesh_client.publisher import connect_publisher

from tests.servers import GatewayProcess, RedisServer
from tests.wsclient import open_ws, recv, send, token

pytestmark = pytest.mark.slow

SESSIONS = [f"c{i}" for i in range(10)]


async def frames_until(ws, done, timeout: float = 10) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    got: list[dict[str, object]] = []
    async with asyncio.timeout(timeout):
        while not done(got):
            got.append(await recv(ws, timeout))
    return got


async def test_ten_channels_recovered_at_connect_each_once_in_order_while_publishing(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url).start()
    gateways.append(node)
    async with connect_publisher(redis_server.url) as publisher:
        firsts = {
            s: [await publisher.publish(f"session:{s}", {"type": "t", "n": n}) for n in range(6)]
            for s in SESSIONS
        }
        stop = asyncio.Event()

        async def publish_more() -> dict[str, int]:
            last: dict[str, int] = {}
            while not stop.is_set():
                for s in SESSIONS:
                    last[s] = (await publisher.publish(f"session:{s}", {"type": "t"})).offset
                await asyncio.sleep(0.001)
            return last

        racing = asyncio.create_task(publish_more())
        await asyncio.sleep(0.02)
        ws = await open_ws(node.ws)
        subscribe = [
            {"channel": f"session:{s}", "since": {"offset": 3, "epoch": e[0].epoch}, "id": i}
            for i, (s, e) in enumerate(firsts.items())
        ]
        subscribe.append({"channel": "session:c3", "id": 99})  # named twice: resubscribed
        await send(ws, {"type": "connect", "token": token("ann", SESSIONS), "subscribe": subscribe})
        replies = await frames_until(
            ws, lambda got: sum(f["type"] == "subscribed" for f in got) == 11
        )
        await asyncio.sleep(0.05)
        stop.set()
        last = await racing
        assert replies[0]["type"] == "connected", replies[0]
        subscribed = [f for f in replies if f["type"] == "subscribed"]
        assert sorted(f["id"] for f in subscribed) == [*range(10), 99]
        assert all(f["recovered"] is True for f in subscribed if f["id"] != 99), subscribed
        again = next(i for i, f in enumerate(replies) if f.get("id") == 99)
        first = next(i for i, f in enumerate(replies) if f.get("id") == 3)
        assert first < again  # the second subscribe of c3 comes after the first one's reply
        rest = await frames_until(
            ws,
            lambda got: all(
                any(f.get("channel") == f"session:{s}" and f.get("offset") == last[s] for f in got)
                for s in SESSIONS
                if s != "c3"
            ),
        )
        frames = replies + rest
        for s in SESSIONS:
            if s == "c3":
                continue  # resubscribed without `since`: it restarts from the live position
            offsets = [
                f["offset"]
                for f in frames
                if f["type"] == "publication" and f["channel"] == f"session:{s}"
            ]
            assert offsets == list(range(4, last[s] + 1)), s
        await ws.close()


async def test_the_limit_is_applied_in_the_order_the_channels_were_named(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url, ARCHMESH_MAX_SUBSCRIPTIONS="4").start()
    gateways.append(node)
    ws = await open_ws(node.ws)
    subscribe = [{"channel": f"session:{s}", "id": i} for i, s in enumerate(SESSIONS[:6])]
    await send(ws, {"type": "connect", "token": token("ann", SESSIONS), "subscribe": subscribe})
    frames = await frames_until(ws, lambda got: len(got) == 7)  # connected + 3 + 3 errors
    assert frames[0]["type"] == "connected"
    assert sorted(f["id"] for f in frames if f["type"] == "subscribed") == [0, 1, 2]
    errors = [f for f in frames if f["type"] == "error"]
    assert sorted(f["id"] for f in errors) == [3, 4, 5]
    assert {f["code"] for f in errors} == {"too_many_subscriptions"}
    await ws.close()
