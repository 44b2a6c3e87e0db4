"""Idempotent publishing through the HTTP API of real gateway processes on one real Redis: a
retried publish answers the first publication's position and nobody sees it twice, even when
the retries race on two nodes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.servers import API_KEY, GatewayProcess, RedisServer
from tests.wsclient import assert_silent, connect, recv_type, subscribe

pytestmark = pytest.mark.slow

WINDOW = 2.0  # ARCHMESH_IDEMPOTENCY_WINDOW of these nodes: short, so expiry can be seen
AUTH = {"Authorization": f"Bearer {API_KEY}"}
RUN = uuid.uuid4().hex[:8]  # channels of this run only, on a Redis other tests share


def channel(name: str) -> str:
    return f"session:{RUN}-{name}"


@pytest.fixture(scope="module")
def nodes(shared_redis: RedisServer) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    window = {"ARCHMESH_IDEMPOTENCY_WINDOW": str(WINDOW)}
    a = GatewayProcess(shared_redis.url, **window).start()
    b = GatewayProcess(shared_redis.url, **window).start()
    yield a, b
    a.stop()
    b.stop()


def publish(node: GatewayProcess, body: Any, key: str | None = None) -> httpx.Response:
    headers = {**AUTH, **({"Idempotency-Key": key} if key is not None else {})}
    return httpx.post(f"{node.http}/api/publish", json=body, headers=headers, timeout=10)


def batch(node: GatewayProcess, items: list[Any]) -> dict[str, Any]:
    reply = httpx.post(f"{node.http}/api/publish/batch", json=items, headers=AUTH, timeout=10)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def history(redis_server: RedisServer, name: str) -> list[bytes]:
    entries = redis_server.client().xrange(f"rt:{{{name}}}:history")
    return [fields[b"d"] for _, fields in entries]


async def test_a_repeat_answers_the_first_position_and_publishes_nothing(
    nodes: tuple[GatewayProcess, GatewayProcess], shared_redis: RedisServer
) -> None:
    a, b = nodes
    ws = await connect(a.ws, "alice", sessions=[f"{RUN}-i1"])
    await subscribe(ws, channel("i1"))
    body = {"channel": channel("i1"), "data": {"type": "t", "n": 1}}
    counted = b.metric("archmesh_api_published_total")
    first = publish(b, body, "deploy-42")
    again = publish(a, body, "deploy-42")  # a retry may reach any node
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert first.json() == {**again.json(), "duplicate": False}
    assert again.json()["duplicate"] is True
    pub = await recv_type(ws, "publication")
    assert (pub["offset"], pub["data"]["n"]) == (first.json()["offset"], 1)
    control = publish(b, {"channel": channel("i1"), "data": {"type": "t", "n": 2}})
    assert control.json() == {  # no key: the reply is as it always was
        "channel": channel("i1"),
        "offset": first.json()["offset"] + 1,
        "epoch": first.json()["epoch"],
    }
    assert (await recv_type(ws, "publication"))["data"]["n"] == 2  # not the repeat
    await assert_silent(ws)
    assert len(history(shared_redis, channel("i1"))) == 2
    assert b.metric("archmesh_api_published_total") == counted + 2  # the repeat is not counted
    assert a.metric("archmesh_api_published_total") == 0


def test_a_key_reused_for_another_event_is_a_conflict(
    nodes: tuple[GatewayProcess, GatewayProcess], shared_redis: RedisServer
) -> None:
    a, b = nodes
    publish(a, {"channel": channel("i2"), "data": {"type": "t", "n": 1}}, "once")
    other = publish(b, {"channel": channel("i2"), "data": {"type": "t", "n": 2}}, "once")
    assert other.status_code == 409
    error = other.json()["error"]
    assert error["code"] == "idempotency_conflict"
    assert "different event" in error["message"]
    assert len(history(shared_redis, channel("i2"))) == 1
    # The same key on another channel is another publication.
    elsewhere = publish(b, {"channel": channel("i3"), "data": {"type": "t", "n": 2}}, "once")
    assert (elsewhere.status_code, elsewhere.json()["duplicate"]) == (200, False)


def test_invalid_keys_are_refused(nodes: tuple[GatewayProcess, GatewayProcess]) -> None:
    a, _ = nodes
    event = {"channel": channel("i4"), "data": {"type": "t"}}
    for key in ("", "has space", "x" * 129, "{tag}", 'a"b'):
        reply = publish(a, event, key)
        assert reply.status_code == 422, key
        assert reply.json()["error"]["code"] == "invalid_idempotency_key", key
    for value in (5, None, ["k"]):
        reply = publish(a, {**event, "idempotency_key": value})
        assert reply.status_code == 422, value
        assert reply.json()["error"]["code"] == "invalid_idempotency_key", value
    both = publish(a, {**event, "idempotency_key": "k1"}, "k2")
    assert (both.status_code, both.json()["error"]["code"]) == (422, "bad_request")
    assert publish(a, {**event, "idempotency_key": "k1"}, "k1").json()["duplicate"] is False
    assert publish(a, {**event, "idempotency_key": "k1"}).json()["duplicate"] is True
    headed = httpx.post(
        f"{a.http}/api/publish/batch",
        json=[event],
        headers={**AUTH, "Idempotency-Key": "k3"},
        timeout=10,
    )
    assert (headed.status_code, headed.json()["error"]["code"]) == (422, "bad_request")


def test_batch_items_carry_their_own_keys(
    nodes: tuple[GatewayProcess, GatewayProcess], shared_redis: RedisServer
) -> None:
    a, b = nodes

    def item(n: int, key: str | None = None) -> dict[str, Any]:
        base: dict[str, Any] = {"channel": channel("i5"), "data": {"type": "t", "n": n}}
        return {**base, "idempotency_key": key} if key is not None else base

    items = [item(1, "b-1"), item(2, "b-2"), item(1, "b-1"), item(3, "b-1"), item(4)]
    body = batch(a, items)
    assert (body["total"], body["successful"], body["failed"]) == (5, 4, 1)
    results = body["results"]
    assert [r.get("duplicate") for r in results] == [False, False, True, None, None]
    assert results[2]["offset"] == results[0]["offset"]
    assert results[3]["error"]["code"] == "idempotency_conflict"
    assert results[4]["offset"] == results[1]["offset"] + 1
    retried = batch(b, items[:3])  # the whole batch again, on another node
    assert [r["duplicate"] for r in retried["results"]] == [True, True, True]
    assert [r["offset"] for r in retried["results"]] == [r["offset"] for r in results[:3]]
    assert len(history(shared_redis, channel("i5"))) == 3


def test_a_key_expires_after_the_window(
    nodes: tuple[GatewayProcess, GatewayProcess], shared_redis: RedisServer
) -> None:
    a, _ = nodes
    body = {"channel": channel("i6"), "data": {"type": "t"}}
    first = publish(a, body, "expiring").json()
    assert publish(a, body, "expiring").json()["duplicate"] is True
    key = f"rt:{{{body['channel']}}}:idem:expiring"
    assert shared_redis.client().pttl(key) == pytest.approx(WINDOW * 1000, abs=500)
    time.sleep(WINDOW + 0.3)  # past the window: expiry itself is the subject
    later = publish(a, body, "expiring").json()
    assert (later["offset"], later["duplicate"]) == (first["offset"] + 1, False)


async def test_retries_racing_on_two_nodes_publish_exactly_once(
    nodes: tuple[GatewayProcess, GatewayProcess], shared_redis: RedisServer
) -> None:
    a, b = nodes
    name, count = channel("race"), 200
    ws = await connect(a.ws, "alice", sessions=[f"{RUN}-race"])
    await subscribe(ws, name)
    # Pairs in waves of 20, each node with a connection free for every pair of a wave: both
    # tries of a key leave together, well within the window, as a client's retry races its
    # first attempt that is still in flight.
    wave = asyncio.Semaphore(20)
    limits = httpx.Limits(max_connections=20)
    clients = {
        node.port: httpx.AsyncClient(base_url=node.http, headers=AUTH, timeout=20, limits=limits)
        for node in (a, b)
    }

    async def attempt(node: GatewayProcess, n: int) -> dict[str, Any]:
        event = {"channel": name, "data": {"type": "t", "n": n}}
        headers = {"Idempotency-Key": f"race-{n}"}
        reply = await clients[node.port].post("/api/publish", json=event, headers=headers)
        assert reply.status_code == 200, reply.text
        answer: dict[str, Any] = reply.json()
        return answer

    async def race(n: int) -> tuple[dict[str, Any], dict[str, Any]]:
        async with wave:
            first, second = await asyncio.gather(attempt(a, n), attempt(b, n))
        return first, second

    try:
        pairs = await asyncio.gather(*(race(n) for n in range(count)))
    finally:
        for client in clients.values():
            await client.aclose()
    for first, second in pairs:
        assert (first["offset"], first["epoch"]) == (second["offset"], second["epoch"])
        assert sorted([first["duplicate"], second["duplicate"]]) == [False, True]
    assert sorted(first["offset"] for first, _ in pairs) == list(range(1, count + 1))
    assert len(history(shared_redis, name)) == count
    got = [await recv_type(ws, "publication", timeout=10) for _ in range(count)]
    assert sorted(p["data"]["n"] for p in got) == list(range(count))
    await assert_silent(ws)
