"""A reconnect storm takes its turn: with ARCHMESH_HANDSHAKE_CONCURRENCY=2, 60 clients that
connect at once and recover a channel from a position all get in, each with what it missed,
once and in order (the gate queues them; it never refuses or drops one). The gate admits fewer
at once while the event loop runs late, and never leaks a slot to a cancelled waiter."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.handshake_gate import TICK, HandshakeGate
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


async def test_the_gate_admits_fewer_while_the_loop_runs_late_and_recovers() -> None:
    """Real lag: a task that holds the loop (as a storm's CPU work does) makes the timer late."""
    gate = HandshakeGate(16, max_lag=0.01)
    inside = 0
    most_inside: list[int] = []
    release = asyncio.Event()

    async def handshake() -> None:
        nonlocal inside
        async with gate:
            inside += 1
            most_inside.append(inside)
            await release.wait()
            inside -= 1

    first = [asyncio.create_task(handshake()) for _ in range(16)]
    await asyncio.sleep(0.05)
    assert (inside, gate.limit) == (16, 16)
    for _ in range(5):
        time.sleep(0.05)  # the loop is held: the gate's timer fires 30 ms late
        await asyncio.sleep(0.005)  # the gate reads it (no reading comes on time in between)
    assert gate.limit == 1
    assert gate.lag > 0.01
    more = [asyncio.create_task(handshake()) for _ in range(20)]
    await asyncio.sleep(0)
    assert gate.waiting == 20  # 16 in progress, 1 allowed: they wait (none refused)
    release.set()
    await asyncio.wait_for(asyncio.gather(*first, *more), 10)
    assert (inside, gate.waiting, max(most_inside)) == (0, 0, 16)
    await asyncio.sleep(3 * TICK)
    assert gate.limit == 16  # idle again: the watcher ended and reset the limit
    await gate.stop()


async def test_a_cancelled_waiter_leaves_no_slot_taken() -> None:
    gate = HandshakeGate(1, max_lag=1.0)
    held = asyncio.Event()

    async def holder() -> None:
        async with gate:
            await held.wait()

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(holder())
    await asyncio.sleep(0.01)
    assert gate.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    held.set()
    await first
    async with gate:  # the slot is free: admitted at once
        assert gate.waiting == 0
    await gate.stop()
