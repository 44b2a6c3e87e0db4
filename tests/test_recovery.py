"""Nothing is lost: recovery with `since`, node-side gap repair, epochs, token lifetime."""

from __future__ import annotations

import asyncio
import random
import signal

import pytest
from archmesh_client.publisher import connect_publisher

from tests.servers import GatewayProcess, RedisServer, wait_until
from tests.wsclient import connect, recv, recv_type, send, subscribe, token

pytestmark = pytest.mark.slow


async def collect(ws, channel: str, until: int, timeout: float = 20) -> list[int]:
    """Offsets of publications on `channel` until offset `until` has arrived."""
    offsets: list[int] = []
    async with asyncio.timeout(timeout):
        while not offsets or offsets[-1] < until:
            frame = await recv(ws, timeout)
            if frame["type"] == "publication" and frame["channel"] == channel:
                offsets.append(frame["offset"])
    return offsets


async def test_recovery_while_publishing_has_no_gap_and_no_duplicate(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url).start()
    gateways.append(node)
    rng = random.Random(7)
    async with connect_publisher(redis_server.url) as publisher:
        for round_ in range(25):
            channel = f"session:race{round_}"
            first = [await publisher.publish(channel, {"type": "t", "n": n}) for n in range(20)]
            since = first[rng.randrange(0, 20)].offset  # the client had seen up to here
            stop = asyncio.Event()

            async def publish_more(channel: str = channel, stop: asyncio.Event = stop) -> int:
                last = 0
                while not stop.is_set():
                    last = (await publisher.publish(channel, {"type": "t"})).offset
                    await asyncio.sleep(rng.random() / 500)
                return last

            racing = asyncio.create_task(publish_more())
            await asyncio.sleep(rng.random() / 100)
            ws = await connect(node.ws, "alice", sessions=[f"race{round_}"])
            reply = await subscribe(ws, channel, since={"offset": since, "epoch": first[0].epoch})
            assert reply["recovered"] is True, reply
            await asyncio.sleep(rng.random() / 50)
            stop.set()
            last = await racing
            offsets = await collect(ws, channel, last)
            assert offsets == list(range(since + 1, last + 1)), f"round {round_}"
            await ws.close()


async def test_lost_position_is_reported_not_papered_over(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url, ARCHMESH_HISTORY_SIZE="5").start()
    gateways.append(node)
    for _ in range(10):
        node.publish("session:t", {"type": "t"})
    epoch = node.publish("session:t", {"type": "t"}).json()["epoch"]
    ws = await connect(node.ws, "alice", sessions=["t"])
    trimmed = await subscribe(ws, "session:t", since={"offset": 2, "epoch": epoch})
    assert (trimmed["recovered"], trimmed["reason"], trimmed["offset"]) == (
        False,
        "history_trimmed",
        11,
    )
    other = await subscribe(ws, "session:t", since={"offset": 9, "epoch": "oldepoch"})
    assert (other["recovered"], other["reason"]) == (False, "epoch_changed")
    ahead = await subscribe(ws, "session:t", since={"offset": 99, "epoch": epoch})
    assert (ahead["recovered"], ahead["reason"]) == (False, "unknown_position")
    ok = await subscribe(ws, "session:t", since={"offset": 8, "epoch": epoch})
    assert ok["recovered"] is True
    assert [(await recv_type(ws, "publication"))["offset"] for _ in range(3)] == [9, 10, 11]
    await ws.close()


async def test_node_repairs_gaps_when_its_pubsub_link_drops(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url).start()
    gateways.append(node)
    ws = await connect(node.ws, "alice", sessions=["gap"])
    await subscribe(ws, "session:gap")
    admin = redis_server.client()
    total = 600
    async with connect_publisher(redis_server.url) as publisher:

        async def publish_all() -> None:
            for n in range(total):
                await publisher.publish("session:gap", {"type": "t", "n": n})
                if n % 100 == 50:
                    # Cut the node's pub/sub connection: what is published until it is back
                    # never reaches it over pub/sub.
                    await asyncio.to_thread(admin.client_kill_filter, _type="pubsub")

        await publish_all()
    offsets = await collect(ws, "session:gap", total, timeout=30)
    assert offsets == list(range(1, total + 1))
    assert "gap_repaired" in node.log.read_text()
    await ws.close()


async def test_gap_repair_covers_a_channel_that_never_delivered(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    """The node knows a channel's position from its first subscriber on: what is published
    while its pub/sub link is down is repaired, though nothing had been delivered before."""
    node = GatewayProcess(redis_server.url).start()
    gateways.append(node)
    ws = await connect(node.ws, "alice", sessions=["quiet"])
    reply = await subscribe(ws, "session:quiet")
    assert reply["offset"] == 0
    admin = redis_server.client()
    total = 30
    async with connect_publisher(redis_server.url) as publisher:
        # Cut the node's pub/sub connection, then publish at once: the first ones never reach
        # it over pub/sub; only history can bring them back.
        await asyncio.to_thread(admin.client_kill_filter, _type="pubsub")
        for n in range(total):
            await publisher.publish("session:quiet", {"type": "t", "n": n})
    offsets = await collect(ws, "session:quiet", total, timeout=30)
    assert offsets == list(range(1, total + 1))
    await ws.close()


async def test_redis_restart_without_persistence_changes_the_epoch(
    private_redis: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(private_redis.url).start()
    gateways.append(node)
    before = node.publish("session:e", {"type": "t"}).json()
    private_redis.stop(signal.SIGKILL)
    private_redis.start()
    wait_until(node.ready, timeout=20, what="node ready after Redis restart")
    ws = await connect(node.ws, "alice", sessions=["e"])
    reply = await subscribe(
        ws, "session:e", since={"offset": before["offset"], "epoch": before["epoch"]}
    )
    assert (reply["recovered"], reply["reason"]) == (False, "epoch_changed")
    await ws.close()


async def test_redis_restart_with_aof_recovers(gateways: list[GatewayProcess]) -> None:
    server = RedisServer(appendonly=True)
    server.start()
    try:
        node = GatewayProcess(server.url).start()
        gateways.append(node)
        seen = node.publish("session:p", {"type": "t", "n": 0}).json()
        for n in range(1, 4):
            node.publish("session:p", {"type": "t", "n": n})
        server.stop(signal.SIGTERM)  # a clean shutdown writes the AOF
        server.start()
        wait_until(node.ready, timeout=20, what="node ready after Redis restart")
        ws = await connect(node.ws, "alice", sessions=["p"])
        reply = await subscribe(
            ws, "session:p", since={"offset": seen["offset"], "epoch": seen["epoch"]}
        )
        assert reply["recovered"] is True, reply
        got = [(await recv_type(ws, "publication"))["data"]["n"] for _ in range(3)]
        assert got == [1, 2, 3]
        await ws.close()
    finally:
        server.cleanup()


async def test_history_lost_under_a_live_subscriber_is_announced(
    private_redis: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(private_redis.url).start()
    gateways.append(node)
    ws = await connect(node.ws, "alice", sessions=["h"])
    await subscribe(ws, "session:h")
    node.publish("session:h", {"type": "t"})
    assert (await recv_type(ws, "publication"))["offset"] == 1
    private_redis.stop(signal.SIGKILL)
    private_redis.start()
    # Both channels the node follows for alice lost their history, the own one included
    # (its position is known from the connect on, though it never delivered anything).
    notices = [await recv(ws, timeout=20) for _ in range(2)]
    assert {n["channel"] for n in notices} == {"session:h", "user:alice"}
    for notice in notices:
        assert notice["type"] == "subscribed"
        assert (notice["recovered"], notice["reason"]) == (False, "history_lost")
    wait_until(node.ready, timeout=20, what="ready")
    fresh = node.publish("session:h", {"type": "t"}).json()
    pub = await recv_type(ws, "publication")
    assert (pub["offset"], pub["epoch"]) == (fresh["offset"], fresh["epoch"])
    await ws.close()


async def test_token_expiry_and_refresh(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url, ARCHMESH_JWT_LEEWAY="0").start()
    gateways.append(node)
    refreshed = await connect_with_ttl(node, ttl=2)
    await send(refreshed, {"type": "refresh", "token": token("alice", ttl=60), "id": 3})
    assert (await recv_type(refreshed, "refreshed"))["id"] == 3
    await send(refreshed, {"type": "refresh", "token": token("mallory", ttl=60), "id": 4})
    assert (await recv_type(refreshed, "error"))["code"] == "invalid_token"
    expiring = await connect_with_ttl(node, ttl=2)
    notice = await recv(expiring, timeout=10)
    assert notice == {
        "type": "disconnect",
        "code": 4004,
        "reason": "token_expired",
        "reconnect": True,
    }
    await send(refreshed, {"type": "ping", "id": 5})
    assert await recv(refreshed) == {"type": "pong", "id": 5}  # past the first token's expiry
    await refreshed.close()


async def connect_with_ttl(node: GatewayProcess, ttl: float):
    from tests.wsclient import open_ws

    ws = await open_ws(node.ws)
    await send(ws, {"type": "connect", "token": token("alice", ttl=ttl)})
    await recv_type(ws, "connected")
    return ws


async def test_presence_of_a_killed_node_expires(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    a = GatewayProcess(redis_server.url, ARCHMESH_PRESENCE_TTL="1").start()
    b = GatewayProcess(redis_server.url, ARCHMESH_PRESENCE_TTL="1").start()
    gateways.extend([a, b])
    on_a = await connect(a.ws, "fay", sessions=["k"])
    on_b = await connect(b.ws, "gus", sessions=["k"])
    await subscribe(on_a, "session:k")
    await subscribe(on_b, "session:k")

    async def present() -> list[str]:
        await send(on_a, {"type": "presence", "channel": "session:k"})
        return sorted(c["user_id"] for c in (await recv_type(on_a, "presence"))["clients"])

    assert await present() == ["fay", "gus"]
    b.stop(signal.SIGKILL)  # no chance to clean up: only the TTL removes gus
    async with asyncio.timeout(10):
        while await present() != ["fay"]:
            await asyncio.sleep(0.1)
    await asyncio.sleep(1.5)  # past several refresh rounds of node A: fay stays
    assert await present() == ["fay"]
    await on_a.close()
