"""Two real gateway nodes on one real Redis, real WebSocket clients: any node delivers any
publication, and nobody sees what is not theirs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from archmesh_client.events import WorkflowUpdate
from archmesh_client.publisher import connect_publisher

from tests.servers import API_KEY, GatewayProcess, RedisServer, wait_until
from tests.wsclient import assert_silent, connect, recv, recv_type, send, subscribe, token

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nodes(shared_redis: RedisServer) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    a = GatewayProcess(shared_redis.url).start()
    b = GatewayProcess(shared_redis.url).start()
    yield a, b
    a.stop()
    b.stop()


def update(session: str, stage: str, progress: float) -> dict[str, object]:
    return {
        "type": "workflow_update",
        "session_id": session,
        "stage": stage,
        "progress": progress,
        "status": "running",
    }


async def test_publish_through_node_b_reaches_client_on_node_a(nodes) -> None:
    a, b = nodes
    ws = await connect(a.ws, "alice", sessions=["s1"])
    sub = await subscribe(ws, "session:s1")
    assert sub["type"] == "subscribed"
    assert sub["channel"] == "session:s1"
    reply = b.publish("session:s1", update("s1", "design", 0.75))
    assert reply.status_code == 200, reply.text
    pub = await recv_type(ws, "publication")
    assert pub["channel"] == "session:s1"
    assert pub["data"] == update("s1", "design", 0.75)
    assert pub["offset"] == reply.json()["offset"] == sub["offset"] + 1
    assert pub["epoch"] == reply.json()["epoch"] == sub["epoch"]
    await ws.close()


async def test_python_publisher_reaches_both_nodes(nodes, shared_redis: RedisServer) -> None:
    a, b = nodes
    on_a = await connect(a.ws, "alice", sessions=["s2"])
    on_b = await connect(b.ws, "bob", sessions=["s2"])
    await subscribe(on_a, "session:s2")
    await subscribe(on_b, "session:s2")
    async with connect_publisher(shared_redis.url) as publisher:
        event = WorkflowUpdate(
            session_id="s2", stage="review", progress=1.0, status="review_required"
        )
        position = await publisher.publish("session:s2", event)
    for ws in (on_a, on_b):
        pub = await recv_type(ws, "publication")
        assert pub["offset"] == position.offset
        assert pub["data"]["status"] == "review_required"
        assert pub["data"]["stage"] == "review"
        await ws.close()


async def test_bare_redis_publish_reaches_client(nodes, shared_redis: RedisServer) -> None:
    a, _ = nodes
    ws = await connect(a.ws, "alice")
    await subscribe(ws, "broadcast")
    client = shared_redis.client()
    wait_until(lambda: client.pubsub_numsub("rt:{broadcast}")[0][1] >= 1, what="subscription")
    client.publish("rt:{broadcast}", b'{"type":"maintenance","minutes":5}')
    pub = await recv_type(ws, "publication")
    assert pub == {
        "type": "publication",
        "channel": "broadcast",
        "data": {"type": "maintenance", "minutes": 5},
    }
    await ws.close()


async def test_user_channels_are_isolated(nodes) -> None:
    a, b = nodes
    alice = await connect(a.ws, "alice")
    bob = await connect(b.ws, "bob")
    await send(bob, {"type": "subscribe", "channel": "user:alice", "id": 9})
    refused = await recv_type(bob, "error")
    assert refused == {
        "type": "error",
        "code": "forbidden",
        "id": 9,
        "message": "not allowed to use user:alice",
    }
    assert (
        b.publish("user:alice", {"type": "notification", "title": "for alice"}).status_code == 200
    )
    assert b.publish("user:bob", {"type": "notification", "title": "for bob"}).status_code == 200
    assert (await recv_type(alice, "publication"))["data"]["title"] == "for alice"
    assert (await recv_type(bob, "publication"))["data"]["title"] == "for bob"
    await assert_silent(alice)
    await assert_silent(bob)
    await alice.close()
    await bob.close()


async def test_session_authorization(nodes) -> None:
    a, _ = nodes
    ws = await connect(a.ws, "carol", sessions=["mine"])
    assert (await subscribe(ws, "session:mine"))["type"] == "subscribed"
    assert (await subscribe(ws, "session:theirs"))["code"] == "forbidden"
    grant = token("carol", channel="session:theirs")
    assert (await subscribe(ws, "session:theirs", token=grant))["type"] == "subscribed"
    other_user = token("mallory", channel="session:other")
    assert (await subscribe(ws, "session:other", token=other_user))["code"] == "forbidden"
    wrong_channel = token("carol", channel="session:elsewhere")
    assert (await subscribe(ws, "session:other", token=wrong_channel))["code"] == "forbidden"
    from shared.tokens import issue_token

    forged = issue_token(
        "not-the-secret-but-long-enough-0123456789", "carol", channel="session:other"
    )
    assert (await subscribe(ws, "session:other", token=forged))["code"] == "forbidden"
    assert (await subscribe(ws, "admin:all"))["code"] == "invalid_channel"
    assert (await subscribe(ws, "session:{x}"))["code"] == "invalid_channel"
    await ws.close()


async def test_unsubscribe_stops_delivery(nodes) -> None:
    a, b = nodes
    ws = await connect(a.ws, "dave", sessions=["u1", "u2"])
    await subscribe(ws, "session:u1")
    await subscribe(ws, "session:u2")
    await send(ws, {"type": "unsubscribe", "channel": "session:u1", "id": 3})
    assert await recv(ws) == {"type": "unsubscribed", "channel": "session:u1", "id": 3}
    await send(ws, {"type": "unsubscribe", "channel": "session:u1", "id": 4})
    assert (await recv(ws))["code"] == "not_subscribed"
    b.publish("session:u1", update("u1", "x", 0.1))
    b.publish("session:u2", update("u2", "y", 0.2))
    assert (await recv_type(ws, "publication"))["channel"] == "session:u2"
    await assert_silent(ws)
    await ws.close()


async def test_header_authentication(nodes) -> None:
    import websockets

    a, _ = nodes
    headers = {"Authorization": f"Bearer {token('erin')}"}
    async with websockets.connect(a.ws, additional_headers=headers) as ws:
        connected = await recv_type(ws, "connected")
        assert connected["user_id"] == "erin"
        assert connected["node"] == f"node-{a.port}"


async def test_presence_across_nodes(nodes) -> None:
    a, b = nodes
    on_a = await connect(a.ws, "fay", sessions=["team"])
    on_b = await connect(b.ws, "gus", sessions=["team"])
    await subscribe(on_a, "session:team")
    await subscribe(on_b, "session:team")
    await send(on_a, {"type": "presence", "channel": "session:team", "id": 5})
    reply = await recv_type(on_a, "presence")
    assert sorted(c["user_id"] for c in reply["clients"]) == ["fay", "gus"]
    await on_b.close()
    await asyncio.sleep(0)
    # After gus leaves, node B removes his entry: poll through the real interface.
    for _ in range(100):
        await send(on_a, {"type": "presence", "channel": "session:team"})
        clients = (await recv_type(on_a, "presence"))["clients"]
        if [c["user_id"] for c in clients] == ["fay"]:
            break
        await asyncio.sleep(0.05)
    assert [c["user_id"] for c in clients] == ["fay"]
    await on_a.close()


def test_publish_api_errors(nodes) -> None:
    a, _ = nodes
    url = f"{a.http}/api/publish"
    good = {"channel": "session:x", "data": {"type": "t"}}
    auth = {"Authorization": f"Bearer {API_KEY}"}
    missing = httpx.post(url, json=good)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    assert httpx.post(url, json=good, headers={"Authorization": "Bearer nope"}).status_code == 401
    bad_json = httpx.post(url, content=b"{", headers=auth)
    assert (bad_json.status_code, bad_json.json()["error"]["code"]) == (400, "bad_json")
    cases = [
        ({"channel": "nope", "data": {"type": "t"}}, "invalid_channel"),
        ({"channel": "session:x", "data": [1]}, "bad_data"),
        ({"channel": "session:x", "data": {"no": "type"}}, "bad_data"),
        ({"channel": "session:x"}, "bad_data"),
        ({"data": {"type": "t"}}, "bad_request"),
        ([], "bad_request"),
    ]
    for body, code in cases:
        reply = httpx.post(url, json=body, headers=auth)
        assert (reply.status_code, reply.json()["error"]["code"]) == (422, code), body
    huge = {"channel": "session:x", "data": {"type": "t", "blob": "x" * 70000}}
    too_large = httpx.post(url, json=huge, headers=auth)
    assert (too_large.status_code, too_large.json()["error"]["code"]) == (413, "too_large")


def test_batch_publish_reports_each_item(nodes) -> None:
    a, _ = nodes
    items = [
        {"channel": "session:b1", "data": {"type": "t", "n": 1}},
        {"channel": "bad channel", "data": {"type": "t"}},
        {"channel": "session:b1", "data": "not an object"},
        {"channel": "session:b1", "data": {"type": "t", "n": 2}},
    ]
    reply = httpx.post(
        f"{a.http}/api/publish/batch", json=items, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert reply.status_code == 200
    body = reply.json()
    assert (body["total"], body["successful"], body["failed"]) == (4, 2, 2)
    assert [r["ok"] for r in body["results"]] == [True, False, False, True]
    assert body["results"][1]["error"]["code"] == "invalid_channel"
    assert body["results"][3]["offset"] == body["results"][0]["offset"] + 1


def test_health_and_readiness(nodes) -> None:
    a, _ = nodes
    assert httpx.get(f"{a.http}/healthz").json() == {"status": "ok", "node": f"node-{a.port}"}
    ready = httpx.get(f"{a.http}/readyz")
    assert ready.status_code == 200
    assert ready.json()["broker"] is True
    assert "archmesh_connections" in httpx.get(f"{a.http}/metrics").text


def test_the_javascript_sdk_is_served(nodes) -> None:
    a, _ = nodes
    reply = httpx.get(f"{a.http}/static/archmesh-realtime.js")
    assert reply.status_code == 200
    assert "javascript" in reply.headers["content-type"]
    assert "export class ArchMeshRealtime" in reply.text
