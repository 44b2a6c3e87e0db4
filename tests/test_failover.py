"""A node dies under a subscribed SDK client while messages flow: the client reconnects
through the balancer to another node and ends with every message exactly once, in order."""

from __future__ import annotations

import asyncio
import signal

import pytest
from archmesh_client.publisher import connect_publisher
from archmesh_client.realtime import Publication, RealtimeClient, RecoveryFailed

from tests.balancer import Balancer
from tests.servers import GatewayProcess, RedisServer
from tests.wsclient import token

pytestmark = pytest.mark.slow

TOTAL = 1000
RATE = 400  # messages per second: the run lasts 2.5 s, the kill lands in the middle


@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_node_loss_loses_nothing(
    kill: signal.Signals, redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    nodes = [GatewayProcess(redis_server.url).start() for _ in range(3)]
    gateways.extend(nodes)
    async with Balancer([n.port for n in nodes]) as balancer:
        client = RealtimeClient(
            balancer.ws, token("alice", ["run"]), backoff_base=0.05, backoff_cap=0.5
        )
        first = await client.connect()
        victim = next(n for n in nodes if first.node == f"node-{n.port}")
        await client.subscribe("session:run")
        received: list[int] = []
        failures: list[RecoveryFailed] = []

        async def consume() -> None:
            async for item in client.publications():
                if isinstance(item, RecoveryFailed):
                    failures.append(item)
                elif isinstance(item, Publication) and item.channel == "session:run":
                    received.append(item.data["n"])
                    if len(received) == TOTAL:
                        return

        consumer = asyncio.create_task(consume())
        async with connect_publisher(redis_server.url) as publisher:
            for n in range(TOTAL):
                await publisher.publish("session:run", {"type": "t", "n": n})
                if n == TOTAL // 2:
                    assert victim.proc is not None
                    victim.proc.send_signal(kill)
                await asyncio.sleep(1 / RATE)
        await asyncio.wait_for(consumer, 30)
        await client.close()
    assert failures == []
    assert received == list(range(TOTAL))  # all, once each, in order
    assert client.info is not None
    assert client.info.node != first.node  # it really moved to another node
