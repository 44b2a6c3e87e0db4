"""A slow client never holds up the others; a Redis outage never takes a node down."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest
from archmesh_client.publisher import connect_publisher

from tests.servers import GatewayProcess, RedisServer, wait_until
from tests.wsclient import RawSocketClient, connect, recv, recv_type, send, subscribe

pytestmark = pytest.mark.slow


async def test_slow_consumer_is_disconnected_and_others_get_everything(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url, ARCHMESH_CLIENT_QUEUE_BYTES="65536").start()
    gateways.append(node)
    slow = RawSocketClient(node.port, rcvbuf=4096)
    from tests.wsclient import token

    slow.send_text(json.dumps({"type": "connect", "token": token("slow", ["load"])}))
    slow.send_text(json.dumps({"type": "subscribe", "channel": "session:load", "id": 1}))
    fast = await connect(node.ws, "fast", sessions=["load"])
    await subscribe(fast, "session:load")
    client = redis_server.client()
    wait_until(lambda: node.metric("archmesh_connections") == 2, what="both clients")
    wait_until(lambda: client.zcard("rt:{session:load}:presence") == 2, what="both subscribed")

    total = 800  # 3.2 MB: past what the kernel's socket buffers and the 64 KiB queue hold
    padding = "x" * 4000
    received: list[int] = []

    async def consume() -> None:
        while len(received) < total:
            frame = await recv(fast, timeout=10)
            received.append(frame["data"]["n"])

    async def caught_up(count: int) -> None:
        deadline = asyncio.get_running_loop().time() + 10
        while len(received) < count and not consumer.done():
            assert asyncio.get_running_loop().time() < deadline, f"{len(received)} of {count}"
            await asyncio.sleep(0.002)

    consumer = asyncio.create_task(consume())
    async with connect_publisher(redis_server.url) as publisher:
        for n in range(total):
            await publisher.publish("session:load", {"type": "tick", "n": n, "pad": padding})
            if n % 5 == 4:
                # The fast client keeps up by construction (at most ~20 KiB of its 64 KiB queue
                # pending, however loaded the machine), so only the one that never reads fills.
                await caught_up(n + 1)
    await asyncio.wait_for(consumer, 30)
    assert received == list(range(total))  # every message, in order, to the fast client

    wait_until(
        lambda: node.metric("archmesh_disconnects_total", 'code="4001"') == 1,
        what="slow consumer disconnect",
    )
    began = time.monotonic()
    backlog = slow.read_until_closed(timeout=10)  # the server hung up on it
    # Promptly (outbox.LINGER), not at the ping timeout: it never read its close frame.
    assert time.monotonic() - began < 5
    slow.close()
    assert backlog.count(b'"type":"publication"') < total
    assert node.metric("archmesh_connections") == 1
    await fast.close()


async def test_redis_outage_keeps_clients_and_delivery_resumes(
    private_redis: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(private_redis.url).start()
    gateways.append(node)
    ws = await connect(node.ws, "alice", sessions=["r1"])
    await subscribe(ws, "session:r1")
    assert node.publish("session:r1", {"type": "t", "n": 1}).status_code == 200
    assert (await recv_type(ws, "publication"))["data"]["n"] == 1

    private_redis.stop(signal.SIGKILL)
    wait_until(lambda: not node.ready(), what="not ready while Redis is down")
    # The alerts read these (deploy/prometheus/alerts.yml): not ready, broker disconnected.
    assert (node.metric("archmesh_ready"), node.metric("archmesh_broker_connected")) == (0, 0)
    assert httpx.get(f"{node.http}/healthz").status_code == 200
    down = node.publish("session:r1", {"type": "t", "n": 2})
    assert (down.status_code, down.json()["error"]["code"]) == (503, "unavailable")
    await send(ws, {"type": "ping", "id": 1})
    assert await recv(ws) == {"type": "pong", "id": 1}  # the client stays connected

    private_redis.start()  # same port, empty (no persistence): the channel's history is gone
    # The own channel's too: the node follows its position from the connect on.
    notices = [await recv(ws, timeout=20) for _ in range(2)]
    assert {n["channel"] for n in notices} == {"session:r1", "user:alice"}
    for notice in notices:
        assert (notice["type"], notice["recovered"], notice["reason"]) == (
            "subscribed",
            False,
            "history_lost",
        )
    wait_until(node.ready, timeout=20, what="ready again after Redis is back")
    assert node.metric("archmesh_ready") == 1
    assert node.publish("session:r1", {"type": "t", "n": 3}).status_code == 200
    assert (await recv_type(ws, "publication"))["data"]["n"] == 3
    assert node.metric("archmesh_broker_reconnects_total") >= 2
    assert "redis_unreachable" in node.log.read_text()
    await ws.close()


async def test_sigterm_drains_clients_with_reconnect_code(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url, ARCHMESH_DRAIN_SECONDS="1.5").start()
    gateways.append(node)
    clients = [await connect(node.ws, f"user{n}") for n in range(3)]
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: httpx.get(f"{node.http}/readyz").status_code == 503, what="not ready")
    assert httpx.get(f"{node.http}/readyz").json()["draining"] is True
    for ws in clients:
        notice = await recv(ws, timeout=10)
        assert notice == {
            "type": "disconnect",
            "code": 4000,
            "reason": "shutdown",
            "reconnect": True,
        }
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.close_code == 4000
    node.proc.wait(timeout=15)
    assert "drain_finished" in node.log.read_text()
