"""The operator console's backing on real processes: node announcements (shared/announcements.py)
from two gateways and a notifier on one real Redis, a killed node vanishing within its TTL, a
draining node saying so, the busiest channels and a user's connections across nodes, and the
admin credential on every console endpoint. The board itself on memory, Redis and Cluster."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from shared.announcements import create_board
from shared.tokens import issue_token
from tests.servers import (
    API_KEY,
    JWT_SECRET,
    GatewayProcess,
    NotifierProcess,
    RedisServer,
    wait_until,
)
from tests.wsclient import connect, subscribe

pytestmark = pytest.mark.redis

FAST = {"ARCHMESH_ANNOUNCE_INTERVAL": "0.3", "ARCHMESH_ANNOUNCE_TTL": "1.5"}
TTL = 1.5
KEY = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def cluster(redis: RedisServer) -> Iterator[tuple[GatewayProcess, NotifierProcess]]:
    """A long-lived gateway (the one the console is read from) and a notifier."""
    env = {**FAST, "ARCHMESH_PRESENCE_PREFIXES": "session:,user:"}
    gateway = GatewayProcess(redis.url, **env).start()
    notifier = NotifierProcess(redis.url, **FAST).start()
    yield gateway, notifier
    notifier.stop()
    gateway.stop()


def admin_token(admin: bool = True) -> str:
    now = int(time.time())
    claims = {"sub": "operator", "iat": now, "exp": now + 600, "admin": admin}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def nodes(gateway: GatewayProcess) -> dict[str, dict[str, Any]]:
    reply = httpx.get(f"{gateway.http}/api/admin/nodes", headers=KEY, timeout=5)
    assert reply.status_code == 200, reply.text
    return {node["node"]: node for node in reply.json()["nodes"]}


def test_every_gateway_and_notifier_announces_itself_and_a_killed_one_vanishes(
    cluster: tuple[GatewayProcess, NotifierProcess], redis: RedisServer
) -> None:
    gateway, notifier = cluster
    other = GatewayProcess(redis.url, **FAST).start()
    try:
        names = {gateway.env["ARCHMESH_NODE_ID"], other.env["ARCHMESH_NODE_ID"]}
        wanted = names | {notifier.env["ARCHMESH_NODE_ID"]}
        wait_until(lambda: wanted <= set(nodes(gateway)), what="three announced nodes")
        wait_until(
            lambda: all(nodes(gateway)[n]["broker"] == "connected" for n in names),
            what="both brokers connected",
        )
        listed = nodes(gateway)
        for name in names:
            node = listed[name]
            assert (node["role"], node["draining"]) == ("gateway", False)
            assert node["version"]
            assert node["uptime"] >= 0
            assert {"deliveries", "publications"} <= set(node["rates"])
        found = listed[notifier.env["ARCHMESH_NODE_ID"]]
        assert found["role"] == "notifier"
        assert {"queue_lag", "pending", "dead_letters"} <= set(found)
        assert "throughput" in found["rates"]

        # Killed, it withdraws nothing: its announcement expires (within the TTL, plus the
        # long-lived node's poll).
        other.stop(signal.SIGKILL)
        gone = other.env["ARCHMESH_NODE_ID"]
        wait_until(lambda: gone not in nodes(gateway), timeout=TTL + 3, what="the dead node gone")
        assert notifier.env["ARCHMESH_NODE_ID"] in nodes(gateway)
    finally:
        other.stop()


async def test_a_draining_gateway_says_so_then_leaves_the_list(
    cluster: tuple[GatewayProcess, NotifierProcess], redis: RedisServer
) -> None:
    gateway, _ = cluster
    draining = GatewayProcess(redis.url, **FAST, ARCHMESH_DRAIN_SECONDS="4").start()
    name = draining.env["ARCHMESH_NODE_ID"]
    # Two clients: the drain waits between their reconnect requests, long enough to be seen.
    await connect(draining.ws, "d1")
    await connect(draining.ws, "d2")
    await asyncio.to_thread(wait_until, lambda: name in nodes(gateway), what="announced")
    assert draining.proc is not None
    draining.proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(
            wait_until,
            lambda: nodes(gateway).get(name, {}).get("draining") is True,
            what="the node announced as draining",
        )
        await asyncio.to_thread(
            wait_until, lambda: name not in nodes(gateway), timeout=15, what="withdrawn"
        )
    finally:
        draining.stop()


async def test_busiest_channels_and_a_users_connections_across_nodes(
    cluster: tuple[GatewayProcess, NotifierProcess], redis: RedisServer
) -> None:
    gateway, _ = cluster
    env = {**FAST, "ARCHMESH_PRESENCE_PREFIXES": "session:,user:"}
    other = GatewayProcess(redis.url, **env).start()
    try:
        here = await connect(gateway.ws, "ops-ada", ["busy"])
        there = await connect(other.ws, "ops-ada", ["busy"])
        bob = await connect(other.ws, "ops-bob", ["busy"])
        for ws in (here, there, bob):
            assert (await subscribe(ws, "session:busy"))["type"] == "subscribed"

        def busiest() -> list[dict[str, Any]]:
            reply = httpx.get(f"{gateway.http}/api/admin/channels", headers=KEY, timeout=5)
            return list(reply.json()["channels"])

        def busy_is_top() -> bool:
            top = busiest()
            return bool(top) and top[0]["channel"] == "session:busy" and top[0]["subscribers"] == 3

        await asyncio.to_thread(wait_until, busy_is_top, what="session:busy the busiest")
        assert len(busiest()[0]["nodes"]) == 2

        url = f"{gateway.http}/api/admin/users/ops-ada"
        found = httpx.get(url, headers=KEY, timeout=5).json()
        assert found["tracked"] is True
        where = sorted(m["node"] for m in found["members"])
        assert where == sorted([gateway.env["ARCHMESH_NODE_ID"], other.env["ARCHMESH_NODE_ID"]])

        presence = httpx.get(
            f"{gateway.http}/api/admin/channels/session:busy/presence", headers=KEY, timeout=5
        ).json()
        assert presence["stats"] == {"connections": 3, "users": 2}
    finally:
        other.stop()


def test_console_endpoints_take_the_api_key_or_an_admin_token_never_a_user_token(
    cluster: tuple[GatewayProcess, NotifierProcess],
) -> None:
    gateway, notifier = cluster
    routes = [
        f"{gateway.http}/api/admin/whoami",
        f"{gateway.http}/api/admin/nodes",
        f"{gateway.http}/api/admin/channels",
        f"{gateway.http}/api/admin/channels/session:x/presence",
        f"{gateway.http}/api/admin/users/ada",
        f"{notifier.http}/api/ops/queue",
        f"{notifier.http}/api/ops/dead-letters",
        f"{notifier.http}/api/ops/notifications/n1/timeline",
    ]
    user = issue_token(JWT_SECRET, "ada")
    for url in routes:
        for headers, status, code in [
            ({}, 401, "unauthorized"),
            ({"Authorization": "Bearer wrong"}, 401, "unauthorized"),
            ({"Authorization": f"Bearer {user}"}, 403, "forbidden"),
            ({"Authorization": f"Bearer {admin_token(admin=False)}"}, 403, "forbidden"),
        ]:
            reply = httpx.get(url, headers=headers, timeout=5)
            assert reply.status_code == status, url
            assert reply.headers["content-type"] == "application/json"
            assert reply.json()["error"]["code"] == code, url
    whoami = f"{gateway.http}/api/admin/whoami"
    assert httpx.get(whoami, headers=KEY).json()["credential"] == "api_key"
    admin = {"Authorization": f"Bearer {admin_token()}"}
    assert httpx.get(whoami, headers=admin).json()["credential"] == "admin_token"
    # The console acts through the documented APIs: an admin token opens them too.
    body = {"channel": "session:x", "data": {"type": "t"}}
    published = httpx.post(f"{gateway.http}/api/publish", json=body, headers=admin)
    assert published.status_code == 200, published.text
    page = httpx.get(f"{gateway.http}/admin")
    assert page.status_code == 200
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert page.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("backend", ["memory", "redis", "cluster"])
async def test_the_board_lists_live_nodes_on_every_backend(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = {"memory": "memory://", "redis": "", "cluster": ""}[backend]
    if backend == "redis":
        url = request.getfixturevalue("redis_server").url
    elif backend == "cluster":
        url = request.getfixturevalue("redis_cluster").url
    board = create_board(url)
    try:
        await board.announce("gateway:a", {"node": "a"}, ttl=60)
        await board.announce("gateway:short", {"node": "short"}, ttl=0.2)
        await board.announce("notifier:a", {"node": "a", "role": "notifier"}, ttl=60)
        await board.withdraw("gateway:a")
        ours = {"a", "short"}  # the memory board is the process's: other tests' nodes too

        async def listed() -> list[dict[str, Any]]:
            return [n for n in await board.nodes() if n["node"] in ours]

        deadline = time.monotonic() + 5
        while len(await listed()) != 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await listed() == [{"node": "a", "role": "notifier"}]
    finally:
        await board.withdraw("notifier:a")
        await board.close()
