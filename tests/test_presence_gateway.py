"""Presence through real gateway nodes on a private Redis, with real WebSocket clients: the
refresh is pipelined (one script call per tracked channel per interval, not one per
subscription), and `presence_stats` counts live connections and distinct users across nodes,
also after a node is SIGKILLed (its entries expire after the short TTL set here). The refresh
during an outage (a node's tracker on a Redis that is killed, then started again) warns once a
round and enters everything again once Redis is back."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from structlog.testing import capture_logs
from websockets.asyncio.client import ClientConnection

from gateway.membership import Membership
from gateway.metrics import GatewayMetrics
from gateway.presence import PresenceTracker
from shared.broker import Liveness
from shared.broker.memory import MemoryBroker
from shared.presence import create_presence
from tests.members import IdleMember
from tests.servers import GatewayProcess, RedisServer
from tests.wsclient import assert_silent, connect, recv_type, send, subscribe

pytestmark = pytest.mark.slow

TTL = "1"  # seconds: refreshed every third of it; a dead node's entries gone after it


async def stats(ws: ClientConnection, channel: str, request_id: int = 9) -> dict[str, object]:
    await send(ws, {"type": "presence_stats", "channel": channel, "id": request_id})
    return await recv_type(ws, "presence_stats")


async def counts(ws: ClientConnection, channel: str) -> tuple[object, object]:
    reply = await stats(ws, channel)
    return reply["connections"], reply["users"]


async def test_presence_stats_across_nodes_and_after_a_node_is_killed(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    a = GatewayProcess(redis_server.url, ARCHMESH_PRESENCE_TTL=TTL).start()
    b = GatewayProcess(redis_server.url, ARCHMESH_PRESENCE_TTL=TTL).start()
    gateways += [a, b]
    fay = await connect(a.ws, "fay", sessions=["team"])
    on_b = [
        await connect(b.ws, "gus", sessions=["team"]),
        await connect(b.ws, "gus", sessions=["team"]),  # a second tab of gus
        await connect(b.ws, "hal", sessions=["team"]),
    ]
    for ws in [fay, *on_b]:
        assert (await subscribe(ws, "session:team"))["type"] == "subscribed"
    reply = await stats(fay, "session:team", request_id=4)
    assert reply == {
        "type": "presence_stats",
        "channel": "session:team",
        "connections": 4,
        "users": 3,
        "id": 4,
    }
    await asyncio.sleep(2.5)  # more than two TTLs: the refreshes keep every entry
    assert await counts(fay, "session:team") == (4, 3)
    await on_b[2].close()  # hal leaves: node B removes his entry at once
    for _ in range(100):
        if await counts(fay, "session:team") == (3, 2):
            break
        await asyncio.sleep(0.02)
    assert await counts(fay, "session:team") == (3, 2)

    b.stop(signal.SIGKILL)  # no clean-up: gus's two entries stay until their TTL runs out
    killed = time.monotonic()
    assert await counts(fay, "session:team") == (3, 2)
    while await counts(fay, "session:team") != (1, 1):
        assert time.monotonic() - killed < 5, "a dead node's entries outlived their TTL"
        await asyncio.sleep(0.05)
    assert time.monotonic() - killed > 0.5  # expired, not removed by a clean-up

    # Authorized like `presence`: a channel the connection may not subscribe to, or untracked.
    await send(fay, {"type": "presence_stats", "channel": "session:other", "id": 5})
    assert (await recv_type(fay, "error"))["code"] == "forbidden"
    await send(fay, {"type": "presence_stats", "channel": "user:fay", "id": 6})
    assert (await recv_type(fay, "error"))["code"] == "forbidden"


async def test_refresh_is_one_script_call_per_channel_not_per_subscription(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url, ARCHMESH_PRESENCE_TTL=TTL).start()
    gateways.append(node)
    channels = ["session:r1", "session:r2", "session:r3"]
    for i in range(10):
        ws = await connect(node.ws, f"user{i}", sessions=["r1", "r2", "r3"])
        for channel in channels:
            assert (await subscribe(ws, channel))["type"] == "subscribed"
    admin = redis_server.client()
    admin.config_resetstat()

    def calls() -> int:
        return int(admin.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))

    # Watch the count until two refresh rounds are in. One call per channel moves it 3 at a
    # time (one pipelined round); one per subscription would move it 30 at a time, so the
    # first reading of 6 or more would already be 30 or more. Counted, not timed.
    seen = calls()
    deadline = asyncio.get_running_loop().time() + 10
    while seen < 6:
        assert asyncio.get_running_loop().time() < deadline, f"only {seen} refresh calls"
        await asyncio.sleep(0.02)
        seen = calls()
    assert seen < 30, seen


async def test_join_and_leave_events_across_two_nodes(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    env = {"ARCHMESH_JOIN_LEAVE": "session:"}
    a = GatewayProcess(redis_server.url, **env).start()
    b = GatewayProcess(redis_server.url, **env).start()
    gateways += [a, b]
    fay = await connect(a.ws, "fay", sessions=["team"])
    assert (await subscribe(fay, "session:team"))["type"] == "subscribed"
    own = await recv_type(fay, "join")  # its own, after its subscribed
    fay_id = own["client_id"]
    assert own == {"type": "join", "channel": "session:team", "user_id": "fay", "client_id": fay_id}

    gus = await connect(b.ws, "gus", sessions=["team"])
    assert (await subscribe(gus, "session:team"))["type"] == "subscribed"
    joined = await recv_type(fay, "join")  # from node B, through the broker
    assert (joined["user_id"], joined["channel"]) == ("gus", "session:team")
    gus_id = joined["client_id"]
    assert (await recv_type(gus, "join"))["client_id"] == gus_id

    # Not part of the channel's stream: a publication's offset follows on from the last.
    before = a.publish("session:team", {"type": "t", "n": 1}).json()["offset"]
    assert (await recv_type(fay, "publication"))["offset"] == before
    assert (await recv_type(gus, "publication"))["offset"] == before
    await send(gus, {"type": "unsubscribe", "channel": "session:team", "id": 3})
    assert (await recv_type(gus, "unsubscribed"))["id"] == 3
    left = {"type": "leave", "channel": "session:team", "user_id": "gus", "client_id": gus_id}
    assert await recv_type(fay, "leave") == left
    after = a.publish("session:team", {"type": "t", "n": 2}).json()["offset"]
    assert after == before + 1
    assert (await recv_type(fay, "publication"))["offset"] == after

    # A disconnect is a leave.
    assert (await subscribe(gus, "session:team"))["type"] == "subscribed"
    assert (await recv_type(fay, "join"))["client_id"] == gus_id
    await recv_type(gus, "join")
    await fay.close()
    assert await recv_type(gus, "leave") == {
        "type": "leave",
        "channel": "session:team",
        "user_id": "fay",
        "client_id": fay_id,
    }
    # Recovery replays the publications only: the events were never in history.
    epoch = a.publish("session:team", {"type": "t", "n": 3}).json()["epoch"]
    assert (await recv_type(gus, "publication"))["offset"] == after + 1
    since = {"offset": before - 1, "epoch": epoch}
    recovered = await subscribe(gus, "session:team", since=since)
    assert (recovered["type"], recovered["recovered"]) == ("subscribed", True)
    replayed = [(await recv_type(gus, "publication"))["offset"] for _ in range(3)]
    assert replayed == [before, after, after + 1]
    assert (await recv_type(gus, "join"))["client_id"] == gus_id  # the resubscribe's, live
    await assert_silent(gus)


async def test_no_join_or_leave_events_by_default(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    a = GatewayProcess(redis_server.url).start()
    gateways.append(a)
    fay = await connect(a.ws, "fay", sessions=["team"])
    assert (await subscribe(fay, "session:team"))["type"] == "subscribed"
    gus = await connect(a.ws, "gus", sessions=["team"])
    assert (await subscribe(gus, "session:team"))["type"] == "subscribed"
    await gus.close()
    await assert_silent(fay)


async def test_a_burst_of_disconnects_leaves_presence_at_once(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    """Leaves of one turn go in one pipeline (gateway/presence.py): 30 clients in 3 channels
    each, closed at once, are gone from presence well before their entries could expire."""
    node = GatewayProcess(redis_server.url, ARCHMESH_PRESENCE_TTL="60").start()
    gateways.append(node)
    channels = ["session:b1", "session:b2", "session:b3"]
    clients = []
    for i in range(30):
        ws = await connect(node.ws, f"burst{i}", sessions=["b1", "b2", "b3"])
        for channel in channels:
            assert (await subscribe(ws, channel))["type"] == "subscribed"
        clients.append(ws)
    watcher = await connect(node.ws, "watcher", sessions=["b1", "b2", "b3"])
    assert await counts(watcher, "session:b2") == (30, 30)
    await asyncio.gather(*(ws.close() for ws in clients))
    deadline = time.monotonic() + 10  # the entries' TTL is 60 s: only the leaves remove them
    left = [await counts(watcher, channel) for channel in channels]
    while left != [(0, 0)] * 3:
        assert time.monotonic() < deadline, left
        await asyncio.sleep(0.05)
        left = [await counts(watcher, channel) for channel in channels]


async def test_a_refresh_round_in_an_outage_warns_once_and_the_next_refreshes_everything(
    private_redis: RedisServer,
) -> None:
    """A node's 2,500 tracked subscriptions go as three parts a round. With Redis down a round
    stops at its first failing part: one warning a round, not one per part; once Redis is back
    (empty: no persistence) the next round enters every entry again."""
    broker = MemoryBroker()
    membership = Membership(broker, GatewayMetrics(), lambda c: None, lambda c, p: None)
    store = create_presence(private_redis.url, Liveness(interval=0.2, timeout=0.5))
    ttl = 1.5  # a round every 0.5 s
    tracker = PresenceTracker(store, membership, "node-a", ttl=ttl)
    channels = [f"session:refresh-{n}" for n in range(5)]
    for n in range(2500):
        channel = channels[n % 5]
        await membership.join(
            IdleMember(f"c{n}"), channel, lambda c=channel: broker.history(c, 0, 0)
        )
    private_redis.stop()
    with capture_logs() as logs:
        tracker.start()
        try:

            def failures() -> list[float]:
                return [
                    entry["at"] for entry in logs if entry["event"] == "presence_refresh_failed"
                ]

            started = time.monotonic()
            while len(failures()) < 2 and time.monotonic() - started < 10:
                await asyncio.sleep(0.02)
                for entry in logs:
                    entry.setdefault("at", time.monotonic())
            first, second = failures()[:2]
            assert second - first > ttl / 3 * 0.8  # a round apart: one warning a round
            private_redis.start()
            started = time.monotonic()
            while time.monotonic() - started < 10:
                counted = [(await store.stats(c)).connections for c in channels]
                if counted == [500] * 5:
                    break
                await asyncio.sleep(0.1)
            assert counted == [500] * 5
        finally:
            await tracker.stop()
            await store.close()
