"""A reconnect storm takes its turn: with ARCHMESH_HANDSHAKE_CONCURRENCY=2, 60 clients that
connect at once and recover a channel from a position all get in, each with what it missed,
once and in order (the gate queues them; it never refuses or drops one)."""

from __future__ import annotations

import asyncio

import pytest

from tests.servers import GatewayProcess, RedisServer
from tests.wsclient import connect, recv_type, send

pytestmark = pytest.mark.redis


async def test_sixty_recovering_clients_through_a_gate_of_two_all_recover(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url, ARCHMESH_HANDSHAKE_CONCURRENCY="2").start()
    gateways.append(node)
    first = node.publish("session:gate", {"type": "tick", "n": 0}).json()
    for n in range(1, 6):
        assert node.publish("session:gate", {"type": "tick", "n": n}).status_code == 200
    since = {"offset": first["offset"], "epoch": first["epoch"]}

    async def client(k: int) -> list[int]:
        ws = await connect(node.ws, f"gate-{k}", sessions=["gate"])
        await send(ws, {"type": "subscribe", "channel": "session:gate", "since": since, "id": 1})
        subscribed = await recv_type(ws, "subscribed", timeout=30)
        assert subscribed["recovered"] is True
        got = [(await recv_type(ws, "publication", timeout=30))["data"]["n"] for _ in range(5)]
        await ws.close()
        return got

    results = await asyncio.gather(*(client(k) for k in range(60)))
    assert results == [[1, 2, 3, 4, 5]] * 60
