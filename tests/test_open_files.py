"""A gateway at its open-files limit (gateway/open_files.py), as a real process whose limit is
set low: it takes client sockets up to the limit less ARCHMESH_FD_RESERVE, refuses the next
handshakes with 503 `node_full` (WebSocket and SSE), counts and logs that (once per 10 s),
keeps serving the sockets it holds, and takes new ones again as soon as some close."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from archmesh_client.channels import user_channel
from archmesh_client.publisher import connect_publisher
from websockets.asyncio.client import ClientConnection

from tests.servers import GatewayProcess, RedisServer
from tests.wsclient import connect, recv_type, send, token

pytestmark = pytest.mark.redis

LIMIT, RESERVE = 160, 60  # room for 100 client sockets


async def refused(url: str) -> tuple[int, dict[str, object]]:
    with pytest.raises(websockets.InvalidStatus) as caught:
        await websockets.connect(url, open_timeout=5)
    response = caught.value.response
    return response.status_code, json.loads(response.body or b"{}")


async def test_a_node_out_of_sockets_refuses_with_503_serves_the_rest_and_recovers(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url, ARCHMESH_FD_RESERVE=str(RESERVE))
    node.open_files = LIMIT
    gateways.append(node.start())
    held: list[ClientConnection] = []
    for n in range(LIMIT - RESERVE):
        held.append(await connect(node.ws, f"u{n}"))
        await send(held[-1], {"type": "subscribe", "channel": "broadcast", "id": 2})
        await recv_type(held[-1], "subscribed")

    answers = [await refused(node.ws) for _ in range(3)]
    assert [status for status, _ in answers] == [503] * 3
    assert all(body["error"]["code"] == "node_full" for _, body in answers)  # type: ignore[index]
    sse = httpx.get(
        f"{node.http}/sse",
        params={"channel": "broadcast"},
        headers={"Authorization": f"Bearer {token('s0')}"},
        timeout=5,
    )
    assert (sse.status_code, sse.json()["error"]["code"]) == (503, "node_full")

    # The sockets it holds are served as before.
    assert node.publish("broadcast", {"type": "t", "n": 1}).status_code == 200
    got = await asyncio.gather(*(recv_type(ws, "publication") for ws in held))
    assert [frame["data"]["n"] for frame in got] == [1] * len(held)

    # Some close: new ones are taken again.
    for ws in held[:3]:
        await ws.close()
    await asyncio.sleep(0.3)
    again = await connect(node.ws, "back")
    await again.close()

    assert node.metric("archmesh_connections_refused_total") == 4
    assert node.metric("archmesh_open_files_limit") == LIMIT
    lines = [json.loads(line) for line in node.log.read_text().splitlines() if "open_files" in line]
    full = [line for line in lines if line.get("event") == "open_files_full"]
    assert len(full) == 1, lines  # four refusals in a second: one line
    assert (full[0]["capacity"], full[0]["limit"]) == (LIMIT - RESERVE, LIMIT)


async def test_descriptors_run_out_anyway_the_node_says_so_and_recovers(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    """No reserve: the kernel's limit is reached first, and uvloop drops the sockets it cannot
    take unanswered; the watcher finds the descriptors at the limit and says so, the sockets
    held still get their publications, and closing some lets new ones in."""
    node = GatewayProcess(redis_server.url, ARCHMESH_FD_RESERVE="0")
    node.open_files = 120
    gateways.append(node.start())
    held: list[ClientConnection] = []
    dropped = 0
    for n in range(140):
        try:
            held.append(await connect(node.ws, f"u{n}"))
        except (websockets.InvalidMessage, websockets.ConnectionClosed, OSError, TimeoutError):
            dropped += 1
    assert dropped > 0
    assert len(held) < 120

    async def said() -> bool:
        return "open_files_exhausted" in await asyncio.to_thread(node.log.read_text)

    for _ in range(100):  # the watcher counts every 2 s
        if await said():
            break
        await asyncio.sleep(0.05)
    assert await said()
    async with connect_publisher(redis_server.url) as publisher:  # the node's HTTP is full too
        await publisher.publish(user_channel("u0"), {"type": "t", "n": 1})
    assert (await recv_type(held[0], "publication"))["data"]["n"] == 1

    for ws in held[-10:]:
        await ws.close()
    await asyncio.sleep(0.3)
    again = await connect(node.ws, "back")
    await again.close()
    assert node.metric("archmesh_open_files_exhausted_total") >= 1
