"""The fan-out path: frames written straight to the socket (default) and through ASGI (per-message
deflate on) deliver the same, in order; its metrics count what happened."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from gateway.protocol import text_frame
from tests.servers import GatewayProcess, RedisServer, wait_until
from tests.wsclient import connect, recv, recv_type, subscribe

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_text_frame_is_what_websockets_would_send(size: int) -> None:
    payload = b"x" * size
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert text_frame(payload) == expected


@pytest.mark.parametrize("deflate", ["false", "true"], ids=["direct", "asgi"])
async def test_both_write_paths_deliver_in_order(
    redis_server: RedisServer, gateways: list[GatewayProcess], deflate: str
) -> None:
    node = GatewayProcess(redis_server.url, ARCHMESH_WS_PER_MESSAGE_DEFLATE=deflate).start()
    gateways.append(node)
    clients = [await connect(node.ws, f"u{i}") for i in range(3)]
    for ws in clients:
        assert (await subscribe(ws, "broadcast"))["type"] == "subscribed"
    # The websockets client offers per-message deflate: the node takes it only when enabled.
    compressed = [ws.protocol.extensions != [] for ws in clients]
    assert compressed == [deflate == "true"] * 3
    for n in range(50):
        big = "y" * (n * 200)  # frame lengths on both sides of the 126 and 65536 boundaries
        assert node.publish("broadcast", {"type": "t", "n": n, "big": big}).status_code == 200
    for ws in clients:
        got = [(await recv_type(ws, "publication"))["data"]["n"] for _ in range(50)]
        assert got == list(range(50))
    assert node.metric("archmesh_deliveries_total") == 150


async def test_metrics_count_fanout_subscriptions_and_recoveries(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url).start()
    gateways.append(node)
    ws = await connect(node.ws, "meter", sessions=["m1"])
    first = await subscribe(ws, "session:m1")
    assert node.metric("archmesh_subscriptions") == 2  # its own user channel and the session
    for n in range(3):
        assert node.publish("session:m1", {"type": "t", "n": n}).status_code == 200
    frames = [await recv_type(ws, "publication") for _ in range(3)]

    wait_until(lambda: node.metric("archmesh_deliveries_total") == 3, what="deliveries")
    assert node.metric("archmesh_publications_received_total") == 3
    assert node.metric("archmesh_bytes_out_total") > sum(len(str(f)) for f in frames)
    assert node.metric("archmesh_client_frames_received_total") == 2  # connect, subscribe
    assert node.metric("archmesh_fanout_seconds_count") >= 1

    resumed = await subscribe(ws, "session:m1", since={"offset": 1, "epoch": frames[0]["epoch"]})
    assert resumed["recovered"] is True
    assert [(await recv(ws))["data"]["n"] for _ in range(2)] == [1, 2]
    lost = await subscribe(ws, "session:m1", since={"offset": 1, "epoch": "other"})
    assert (lost["recovered"], lost["reason"]) == (False, "epoch_changed")
    assert first["type"] == "subscribed"
    assert node.metric("archmesh_recoveries_total", 'outcome="recovered"') == 1
    assert node.metric("archmesh_recoveries_total", 'outcome="epoch_changed"') == 1
    assert node.metric("archmesh_subscriptions") == 2  # resubscribing replaced, not added

    await ws.close()
    wait_until(lambda: node.metric("archmesh_subscriptions") == 0, what="subscriptions released")
