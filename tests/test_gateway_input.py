"""Bad input gets a clear error frame (the socket stays usable) or a documented close code,
and the node never falls over."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.servers import GatewayProcess, RedisServer
from tests.wsclient import (
    RawSocketClient,
    connect,
    open_ws,
    recv,
    recv_type,
    send,
    subscribe,
    token,
)

pytestmark = pytest.mark.slow

LIMITS = {
    "ARCHMESH_MAX_SUBSCRIPTIONS": "3",
    "ARCHMESH_MAX_FRAME_BYTES": "2048",
    "ARCHMESH_WS_MAX_BYTES": "8192",
    "ARCHMESH_RATE_LIMIT_PER_SECOND": "20",
    "ARCHMESH_RATE_LIMIT_BURST": "20",
    "ARCHMESH_RATE_LIMIT_CLOSE_AFTER": "50",
    "ARCHMESH_CONNECT_TIMEOUT": "0.5",
    "ARCHMESH_ALLOWED_ORIGINS": "https://app.example.com, https://admin.example.com",
    "ARCHMESH_WS_PING_INTERVAL": "0.5",
    "ARCHMESH_WS_PING_TIMEOUT": "0.5",
}


@pytest.fixture(scope="module")
def node(shared_redis: RedisServer) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(shared_redis.url, **LIMITS).start()
    yield gateway
    gateway.stop()


async def still_usable(ws) -> None:
    await send(ws, {"type": "ping", "id": 99})
    assert await recv(ws) == {"type": "pong", "id": 99}


async def closed_with(ws, code: int, reason: str) -> None:
    frame = await recv_type(ws, "disconnect")
    assert frame == {"type": "disconnect", "code": code, "reason": reason, "reconnect": code < 4500}
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == code


@pytest.mark.parametrize(
    ("raw", "code", "message_part"),
    [
        ("not json", "bad_json", "not valid JSON"),
        ("[1,2]", "bad_frame", "JSON object"),
        ('{"type":"dance","id":4}', "bad_frame", "unknown frame type"),
        ('{"id":5}', "bad_frame", "unknown frame type"),
        ('{"type":"subscribe","id":6}', "bad_frame", "channel"),
        ('{"type":"subscribe","channel":42,"id":7}', "bad_frame", "channel"),
        ('{"type":"subscribe","channel":"session:a","extra":1,"id":8}', "bad_frame", "extra"),
        (
            '{"type":"subscribe","channel":"session:a","since":{"offset":-1,"epoch":"e"},"id":9}',
            "bad_frame",
            "since.offset",
        ),
        ('{"type":"ping","id":"text"}', "bad_frame", "id"),
        ('{"type":"connect","token":"x","id":10}', "already_connected", "already connected"),
        ('{"type":"refresh","token":"garbage","id":11}', "invalid_token", "refresh refused"),
        ('{"type":"unsubscribe","channel":"session:never","id":12}', "not_subscribed", "never"),
        ('{"type":"presence","channel":"user:mallory","id":13}', "forbidden", "user:mallory"),
        ('{"type":"presence","channel":"broadcast","id":14}', "forbidden", "not tracked"),
    ],
)
async def test_bad_frames_get_error_frames(node, raw: str, code: str, message_part: str) -> None:
    ws = await connect(node.ws, "alice")
    await ws.send(raw)
    error = await recv_type(ws, "error")
    assert error["code"] == code
    assert message_part in error["message"]
    sent = json.loads(raw) if raw.startswith("{") else {}
    if isinstance(sent.get("id"), int):
        assert error["id"] == sent["id"]
    await still_usable(ws)
    await ws.close()


async def test_binary_and_oversized_frames(node) -> None:
    ws = await connect(node.ws, "alice")
    await ws.send(b'{"type":"ping"}')
    assert (await recv_type(ws, "error"))["code"] == "bad_frame"
    await ws.send(json.dumps({"type": "ping", "pad": "x" * 4000}))
    assert (await recv_type(ws, "error"))["code"] == "frame_too_large"
    await still_usable(ws)
    await ws.send("x" * 10000)  # past the transport limit: the server closes with 1009
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1009


async def test_frames_before_connect(node) -> None:
    ws = await open_ws(node.ws)
    await send(ws, {"type": "subscribe", "channel": "broadcast", "id": 1})
    assert await recv(ws) == {
        "type": "error",
        "code": "not_connected",
        "id": 1,
        "message": "send a connect frame first",
    }
    await send(ws, {"type": "connect", "token": token("alice"), "id": 2})
    assert (await recv_type(ws, "connected"))["id"] == 2
    await ws.close()


@pytest.mark.parametrize(
    "bad_token",
    [
        "not-a-jwt",
        token("alice", ttl=-60),
        __import__("jwt").encode({"sub": "alice", "exp": 4102444800}, key=None, algorithm="none"),
        __import__("shared.tokens", fromlist=["x"]).issue_token(
            "another-secret-of-32-bytes-or-more!", "alice"
        ),
    ],
    ids=["garbage", "expired", "alg-none", "wrong-key"],
)
async def test_invalid_token_closes_without_reconnect(node, bad_token: str) -> None:
    ws = await open_ws(node.ws)
    await send(ws, {"type": "connect", "token": bad_token})
    await closed_with(ws, 4501, "invalid_token")


async def test_connect_timeout(node) -> None:
    ws = await open_ws(node.ws)
    await closed_with(ws, 4006, "connect_timeout")


async def test_too_many_subscriptions(node) -> None:
    ws = await connect(node.ws, "alice", sessions=["a", "b", "c"])
    # user:alice counts: two more fit under the limit of 3.
    assert (await subscribe(ws, "session:a"))["type"] == "subscribed"
    assert (await subscribe(ws, "session:b"))["type"] == "subscribed"
    refused = await subscribe(ws, "session:c")
    assert refused["code"] == "too_many_subscriptions"
    assert refused["id"] == 7
    await still_usable(ws)
    await ws.close()


async def test_flood_is_rate_limited_then_closed(node) -> None:
    ws = await connect(node.ws, "alice")
    for n in range(30):
        await send(ws, {"type": "ping", "id": n})
    replies = [await recv(ws) for _ in range(30)]
    assert {r["type"] for r in replies[:15]} == {"pong"}
    limited = [r for r in replies if r["type"] == "error"]
    assert limited
    assert {r["code"] for r in limited} == {"rate_limited"}
    # The node may close the socket before the last of these is written: a send that finds
    # it closed ends the flood, and the frames it sent before its close are read below.
    with contextlib.suppress(ConnectionClosed):
        for n in range(100):
            await send(ws, {"type": "ping", "id": n})
    frames: list[dict[str, object]] = []

    async def drain() -> None:
        while True:
            frames.append(await recv(ws))

    with pytest.raises(ConnectionClosed):
        await drain()
    assert frames[-1] == {
        "type": "disconnect",
        "code": 4005,
        "reason": "rate_limited",
        "reconnect": True,
    }
    assert ws.close_code == 4005


async def test_origin_check(node) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(node.ws, origin="https://evil.example.com")
    assert refused.value.response.status_code == 403
    assert b"origin_forbidden" in refused.value.response.body
    async with websockets.connect(node.ws, origin="https://admin.example.com") as ws:
        await send(ws, {"type": "connect", "token": token("alice")})
        assert (await recv(ws))["type"] == "connected"


def test_unresponsive_client_is_closed_by_keepalive(node) -> None:
    client = RawSocketClient(node.port)
    client.send_text(json.dumps({"type": "connect", "token": token("zed")}))
    # The raw client never answers the server's pings (0.5 s interval, 0.5 s timeout).
    received = client.read_until_closed(timeout=10)
    assert b"connected" in received
    client.close()


async def test_node_survives_all_of_the_above(node) -> None:
    ws = await connect(node.ws, "alice")
    await still_usable(ws)
    await ws.close()
