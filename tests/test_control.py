"""The control API across nodes: two gateway processes on a private redis-server, commands given
through node A (HTTP) or straight to Redis (the client package's `connect_control`) act on the
clients of node B; revocations reach nodes started afterwards and a node that was partitioned
from Redis when they were given; the per-user connection limit; the HTTP API's refusals."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from archmesh_client.control import connect_control
from archmesh_client.control_commands import CONTROL_CHANNEL
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.servers import (
    API_KEY,
    JWT_SECRET,
    GatewayProcess,
    RedisCluster,
    RedisServer,
    wait_until,
)
from tests.tcpproxy import TcpProxy
from tests.wsclient import assert_silent, open_ws, recv, recv_type, send, subscribe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nodes(shared_redis: RedisServer) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    a = GatewayProcess(shared_redis.url).start()
    b = GatewayProcess(shared_redis.url).start()
    wait_until(lambda: a.ready() and b.ready(), what="both nodes follow the control stream")
    yield a, b
    a.stop()
    b.stop()


def user() -> str:
    """A user of this test alone: the nodes (and Redis) are shared by the module."""
    return f"u{uuid.uuid4().hex[:10]}"


def make_token(sub: str, *, iat: float | None = None, **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"sub": sub, "exp": now + 3600, **claims}
    payload["iat"] = int(iat if iat is not None else now)
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


async def connect_token(url: str, tok: str) -> ClientConnection:
    ws = await open_ws(url)
    await send(ws, {"type": "connect", "token": tok, "id": 1})
    await recv_type(ws, "connected")
    return ws


async def closed_with(ws: ClientConnection, code: int, reason: str, timeout: float = 5) -> None:
    """The server says why (`disconnect`), then closes the socket with that code."""
    frame = await recv(ws, timeout)
    assert frame["type"] == "disconnect", frame
    assert (frame["code"], frame["reason"], frame["reconnect"]) == (code, reason, code < 4500)
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), timeout)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == code


async def refused_at_connect(url: str, tok: str, code: int, reason: str) -> None:
    ws = await open_ws(url)
    await send(ws, {"type": "connect", "token": tok, "id": 1})
    await closed_with(ws, code, reason)


async def alive(ws: ClientConnection) -> None:
    await send(ws, {"type": "ping", "id": 99})
    assert await recv(ws) == {"type": "pong", "id": 99}


def control(node: GatewayProcess, op: str, body: object, key: str = API_KEY) -> httpx.Response:
    return httpx.post(
        f"{node.http}/api/control/{op}",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=5,
    )


def ok(reply: httpx.Response, kind: str) -> dict[str, Any]:
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    assert body["type"] == kind, body
    assert body["offset"] >= 1
    assert body["epoch"]
    return body


# -- through node A's HTTP API, on node B's clients -----------------------------------------


async def test_disconnect_closes_every_connection_of_the_user_with_the_chosen_code(nodes) -> None:
    a, b = nodes
    target, bystander = user(), user()
    on_b = await connect_token(b.ws, make_token(target))
    on_a = await connect_token(a.ws, make_token(target))
    other = await connect_token(b.ws, make_token(bystander))
    ok(control(a, "disconnect", {"user": target}), "disconnect")
    await closed_with(on_b, 4007, "disconnected")
    await closed_with(on_a, 4007, "disconnected")
    await alive(other)

    again = await connect_token(b.ws, make_token(target))  # a disconnect is no ban
    ok(control(a, "disconnect", {"user": target, "reconnect": False}), "disconnect")
    await closed_with(again, 4502, "terminated")
    await alive(other)


async def test_unsubscribe_sends_an_unasked_unsubscribed_with_the_reason(nodes) -> None:
    a, b = nodes
    target = user()
    ws = await connect_token(b.ws, make_token(target, sessions=["ctl-u1", "ctl-u2"]))
    assert (await subscribe(ws, "session:ctl-u1"))["type"] == "subscribed"
    assert (await subscribe(ws, "session:ctl-u2"))["type"] == "subscribed"
    body = {"user": target, "channel": "session:ctl-u1", "reason": "gone"}
    ok(control(a, "unsubscribe", body), "unsubscribe")
    assert await recv(ws) == {"type": "unsubscribed", "channel": "session:ctl-u1", "reason": "gone"}
    a.publish("session:ctl-u1", {"type": "t", "n": 1})
    a.publish("session:ctl-u2", {"type": "t", "n": 2})
    assert (await recv_type(ws, "publication"))["channel"] == "session:ctl-u2"
    await assert_silent(ws)


async def test_subscribe_is_a_server_side_subscription(nodes) -> None:
    a, b = nodes
    target = user()
    ws = await connect_token(b.ws, make_token(target))  # no `sessions`: not allowed itself
    assert (await subscribe(ws, "session:ctl-s1"))["code"] == "forbidden"
    before = a.publish("session:ctl-s1", {"type": "t", "n": 0}).json()
    ok(control(a, "subscribe", {"user": target, "channel": "session:ctl-s1"}), "subscribe")
    subscribed = await recv(ws)
    assert subscribed == {
        "type": "subscribed",
        "channel": "session:ctl-s1",
        "offset": before["offset"],
        "epoch": before["epoch"],
    }
    ok(control(a, "subscribe", {"user": target, "channel": "session:ctl-s1"}), "subscribe")
    published = a.publish("session:ctl-s1", {"type": "t", "n": 1}).json()
    pub = await recv_type(ws, "publication")  # no second `subscribed`: already subscribed
    assert (pub["offset"], pub["data"]["n"]) == (published["offset"], 1)
    await assert_silent(ws)


async def test_revoking_a_token_closes_it_and_refuses_it_everywhere(nodes) -> None:
    a, b = nodes
    target = user()
    revoked, kept = make_token(target, jti="ctl-" + uuid.uuid4().hex), make_token(target)
    doomed = await connect_token(b.ws, revoked)
    spared = await connect_token(b.ws, kept)
    jti = jwt.decode(revoked, options={"verify_signature": False})["jti"]
    ok(control(a, "revoke", {"jti": jti, "exp": time.time() + 3600}), "revoke_token")
    await closed_with(doomed, 4503, "token_revoked")
    await alive(spared)
    await refused_at_connect(a.ws, revoked, 4503, "token_revoked")
    await refused_at_connect(b.ws, revoked, 4503, "token_revoked")
    # Refresh and subscription tokens are checked too.
    await send(spared, {"type": "refresh", "token": revoked, "id": 4})
    assert (await recv_type(spared, "error"))["code"] == "invalid_token"
    grant = make_token(target, channel="session:ctl-g", jti=jti)
    refused = await subscribe(spared, "session:ctl-g", token=grant)
    assert (refused["type"], refused["code"]) == ("error", "forbidden"), refused
    fresh_grant = make_token(target, channel="session:ctl-g")
    assert (await subscribe(spared, "session:ctl-g", token=fresh_grant))["type"] == "subscribed"


async def test_revoking_a_user_cuts_off_tokens_issued_before(nodes) -> None:
    a, b = nodes
    target = user()
    now = time.time()
    old = await connect_token(b.ws, make_token(target, iat=now - 100))
    ok(control(a, "revoke", {"user": target, "before": now - 50}), "revoke_user")
    await closed_with(old, 4503, "token_revoked")
    newer = await connect_token(b.ws, make_token(target, iat=now))  # issued after the cut-off
    await refused_at_connect(a.ws, make_token(target, iat=now - 60), 4503, "token_revoked")
    await alive(newer)


async def test_a_revocation_reaches_a_node_started_afterwards(
    nodes, shared_redis: RedisServer, gateways: list[GatewayProcess]
) -> None:
    a, _ = nodes
    target = user()
    tok = make_token(target, jti="late-" + uuid.uuid4().hex)
    jti = jwt.decode(tok, options={"verify_signature": False})["jti"]
    ok(control(a, "revoke", {"jti": jti}), "revoke_token")  # exp: the longest token lifetime
    c = GatewayProcess(shared_redis.url).start()
    gateways.append(c)
    await refused_at_connect(c.ws, tok, 4503, "token_revoked")
    await alive(await connect_token(c.ws, make_token(target)))


# -- through the Python client, straight to Redis -------------------------------------------


async def test_the_python_client_controls_every_node(nodes, shared_redis: RedisServer) -> None:
    a, b = nodes
    target = user()
    ws = await connect_token(b.ws, make_token(target, jti="py-" + uuid.uuid4().hex))
    async with connect_control(shared_redis.url) as client:
        with pytest.raises(ValidationError):
            await client.subscribe(target, CONTROL_CHANNEL)  # never a client's channel
        with pytest.raises(ValidationError):
            await client.disconnect("not a user id")
        position = await client.subscribe(target, "session:ctl-py")
        assert (await recv_type(ws, "subscribed"))["channel"] == "session:ctl-py"
        published = a.publish("session:ctl-py", {"type": "t"}).json()
        assert (await recv_type(ws, "publication"))["offset"] == published["offset"]
        later = await client.unsubscribe(target, "session:ctl-py", reason="done")
        assert (later.epoch, later.offset) == (position.epoch, position.offset + 1)
        unsubscribed = {"type": "unsubscribed", "channel": "session:ctl-py", "reason": "done"}
        assert await recv(ws) == unsubscribed
        await client.revoke_user(target)
        await closed_with(ws, 4503, "token_revoked")
        older = make_token(target, iat=time.time() - 5)
        await refused_at_connect(a.ws, older, 4503, "token_revoked")

        other = user()
        tok = make_token(other, jti="py-" + uuid.uuid4().hex)
        victim = await connect_token(b.ws, tok)
        await client.revoke_token(jwt.decode(tok, options={"verify_signature": False})["jti"])
        await closed_with(victim, 4503, "token_revoked")
        spare = await connect_token(a.ws, make_token(other))
        await client.disconnect(other, reconnect=False)
        await closed_with(spare, 4502, "terminated")


# -- the HTTP API's refusals ---------------------------------------------------------------


def test_the_control_api_refuses_bad_requests(nodes) -> None:
    a, _ = nodes
    assert control(a, "disconnect", {"user": "x"}, key="wrong").status_code == 401
    bad_json = httpx.post(
        f"{a.http}/api/control/disconnect",
        content=b"{",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert (bad_json.status_code, bad_json.json()["error"]["code"]) == (400, "bad_json")
    cases = [
        ("disconnect", {}),
        ("disconnect", []),
        ("disconnect", {"user": "a b"}),
        ("disconnect", {"user": "x", "reconnect": "yes"}),
        ("disconnect", {"user": "x", "type": "subscribe"}),
        ("disconnect", {"user": "x", "extra": 1}),
        ("subscribe", {"user": "x", "channel": CONTROL_CHANNEL}),
        ("subscribe", {"user": "x", "channel": "admin:all"}),
        ("unsubscribe", {"user": "x", "channel": "broadcast", "reason": "no spaces"}),
        ("revoke", {}),
        ("revoke", {"jti": ""}),
        ("revoke", {"jti": "x", "exp": "soon"}),
        ("revoke", {"user": "x", "before": -1}),
    ]
    for op, body in cases:
        reply = control(a, op, body)
        assert (reply.status_code, reply.json()["error"]["code"]) == (422, "bad_request"), body
    too_large = control(a, "disconnect", {"user": "x", "pad": "x" * 5000})
    assert (too_large.status_code, too_large.json()["error"]["code"]) == (413, "too_large")
    assert httpx.get(f"{a.http}/api/control/disconnect").status_code == 405


# -- a node cut off from Redis when the commands are given ----------------------------------


async def test_commands_given_during_a_partition_apply_once_it_heals(
    shared_redis: RedisServer, nodes, gateways: list[GatewayProcess]
) -> None:
    a, _ = nodes
    with TcpProxy(shared_redis.port) as proxy:
        cut = GatewayProcess(
            f"redis://127.0.0.1:{proxy.port}/0",
            ARCHMESH_REDIS_PING_INTERVAL="0.2",
            ARCHMESH_REDIS_PING_TIMEOUT="0.8",
        )
        gateways.append(cut)
        cut.start()
        wait_until(cut.ready, what="ready through the proxy")
        revoked_user, kicked_user = user(), user()
        revoked = await connect_token(cut.ws, make_token(revoked_user))
        kicked = await connect_token(cut.ws, make_token(kicked_user))

        proxy.blackhole()
        wait_until(lambda: not cut.ready(), timeout=5, what="the partition noticed")
        ok(control(a, "revoke", {"user": revoked_user}), "revoke_user")
        ok(control(a, "disconnect", {"user": kicked_user}), "disconnect")
        await alive(revoked)  # nothing reached the cut-off node yet
        await alive(kicked)
        proxy.resume()

        await closed_with(revoked, 4503, "token_revoked", timeout=15)
        await closed_with(kicked, 4007, "disconnected", timeout=15)
    events = [json.loads(line) for line in cut.log.read_text().splitlines() if line[:1] == "{"]
    repairs = [e for e in events if e.get("event") == "gap_repaired"]
    assert any(e["channel"] == CONTROL_CHANNEL for e in repairs), repairs  # read from history


# -- the per-user connection limit ---------------------------------------------------------


async def test_the_connection_over_the_per_user_limit_is_closed(
    gateways: list[GatewayProcess],
) -> None:
    node = GatewayProcess("", ARCHMESH_USER_CONNECTION_LIMIT="2").start()  # embedded broker
    gateways.append(node)
    target, other = user(), user()
    first = await connect_token(node.ws, make_token(target))
    second = await connect_token(node.ws, make_token(target))
    await refused_at_connect(node.ws, make_token(target), 4504, "connection_limit")
    await alive(first)
    await alive(second)
    others = [await connect_token(node.ws, make_token(other)) for _ in range(2)]
    await first.close()
    await asyncio.sleep(0.2)  # its place is freed once the node saw it go
    third = await connect_token(node.ws, make_token(target))
    await alive(third)
    await alive(second)
    for ws in others:
        await alive(ws)
    # The embedded broker's node follows its control stream too.
    ok(control(node, "disconnect", {"user": target, "reconnect": False}), "disconnect")
    await closed_with(second, 4502, "terminated")
    await closed_with(third, 4502, "terminated")


# -- on the 3-master Redis Cluster ---------------------------------------------------------


async def test_the_control_api_on_a_redis_cluster(
    redis_cluster: RedisCluster, gateways: list[GatewayProcess]
) -> None:
    a = GatewayProcess(redis_cluster.url).start()
    b = GatewayProcess(redis_cluster.url).start()
    gateways += [a, b]
    wait_until(lambda: a.ready() and b.ready(), what="both nodes follow the control stream")
    target = user()
    tok = make_token(target, jti="cl-" + uuid.uuid4().hex, iat=time.time() - 10)
    ws = await connect_token(b.ws, tok)
    ok(control(a, "subscribe", {"user": target, "channel": "session:ctl-cl"}), "subscribe")
    assert (await recv_type(ws, "subscribed"))["channel"] == "session:ctl-cl"
    published = a.publish("session:ctl-cl", {"type": "t"}).json()
    assert (await recv_type(ws, "publication"))["offset"] == published["offset"]
    ok(control(a, "unsubscribe", {"user": target, "channel": "session:ctl-cl"}), "unsubscribe")
    assert (await recv_type(ws, "unsubscribed"))["reason"] == "server"
    ok(control(a, "disconnect", {"user": target}), "disconnect")
    await closed_with(ws, 4007, "disconnected")

    ws = await connect_token(b.ws, tok)
    async with connect_control(redis_cluster.url) as client:
        await client.revoke_user(target, before=time.time() - 5)
    await closed_with(ws, 4503, "token_revoked")
    await refused_at_connect(a.ws, tok, 4503, "token_revoked")
    jti = jwt.decode(tok, options={"verify_signature": False})["jti"]
    other = make_token(user(), jti=jti)  # another user's token with the same `jti`
    ok(control(a, "revoke", {"jti": jti}), "revoke_token")
    await refused_at_connect(b.ws, other, 4503, "token_revoked")
    await alive(await connect_token(b.ws, make_token(target)))


async def test_clients_can_neither_follow_nor_feed_the_control_stream(nodes) -> None:
    a, b = nodes
    ws = await connect_token(b.ws, make_token(user()))
    refused = await subscribe(ws, CONTROL_CHANNEL)
    assert (refused["type"], refused["code"]) == ("error", "invalid_channel")
    forged = a.publish(CONTROL_CHANNEL, {"type": "disconnect", "user": "x", "reconnect": True})
    assert (forged.status_code, forged.json()["error"]["code"]) == (422, "invalid_channel")
    await alive(ws)


async def test_the_python_sdk_adopts_a_server_side_subscription(nodes) -> None:
    from archmesh_client.realtime import Publication, RealtimeClient

    a, b = nodes
    target = user()
    async with RealtimeClient(b.ws, make_token(target)) as client:
        ok(control(a, "subscribe", {"user": target, "channel": "session:ctl-sdk"}), "subscribe")
        items = client.publications()
        deadline = time.monotonic() + 5
        while "session:ctl-sdk" not in client.channels:  # the unasked `subscribed`
            assert time.monotonic() < deadline, "the SDK never adopted the subscription"
            await asyncio.sleep(0.02)
        published = a.publish("session:ctl-sdk", {"type": "t", "n": 7}).json()
        item = await asyncio.wait_for(anext(items), 5)
        assert isinstance(item, Publication)
        assert (item.channel, item.offset, item.data["n"]) == (
            "session:ctl-sdk",
            published["offset"],
            7,
        )


async def test_of_concurrent_connects_only_the_revoked_token_is_refused(nodes) -> None:
    """The revocation checks of a burst of connects leave together (shared/broker/reads.py):
    each connect still gets its own answer."""
    a, _ = nodes
    users = [user() for _ in range(40)]
    tokens = [make_token(u, jti="burst-" + uuid.uuid4().hex) for u in users]
    doomed = 17
    jti = jwt.decode(tokens[doomed], options={"verify_signature": False})["jti"]
    ok(control(a, "revoke", {"jti": jti, "exp": time.time() + 3600}), "revoke_token")
    sockets = [await open_ws(a.ws) for _ in tokens]
    try:
        await asyncio.gather(
            *(
                send(ws, {"type": "connect", "token": tok, "id": 1})
                for ws, tok in zip(sockets, tokens, strict=True)
            )
        )
        for index, ws in enumerate(sockets):
            if index == doomed:
                await closed_with(ws, 4503, "token_revoked")
            else:
                frame = await recv_type(ws, "connected")
                assert frame["user_id"] == users[index]
    finally:
        for ws in sockets:
            await ws.close()
