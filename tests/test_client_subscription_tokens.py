"""The Python SDK keeps subscriptions that short-lived subscription tokens grant: it asks its
`subscription_token` callback ahead of each expiry and sends `sub_refresh`, and when the gateway
ended one anyway it asks once more and resubscribes from the last offset. Real gateway process
(in-memory broker), real WebSocket client."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from archmesh_client.realtime import (
    Publication,
    RealtimeClient,
    RequestError,
    Unsubscribed,
)

from tests.servers import API_KEY, GatewayProcess
from tests.wsclient import token

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node() -> Iterator[GatewayProcess]:
    gateway = GatewayProcess("", ARCHMESH_JWT_LEEWAY="0").start()  # in-memory broker
    yield gateway
    gateway.stop()


@contextlib.asynccontextmanager
async def publishing(node: GatewayProcess, channel: str) -> AsyncIterator[list[int]]:
    """Publishes on `channel` every 50 ms until the block ends; yields the offsets published."""
    offsets: list[int] = []

    async def run(http: httpx.AsyncClient) -> None:
        while True:
            reply = await http.post(
                f"{node.http}/api/publish",
                json={"channel": channel, "data": {"type": "t"}},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
            assert reply.status_code == 200, reply.text
            offsets.append(reply.json()["offset"])
            await asyncio.sleep(0.05)

    async with httpx.AsyncClient(timeout=5) as http:
        task = asyncio.create_task(run(http))
        try:
            yield offsets
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert task.cancelled()  # not failed


async def offsets_until(client: RealtimeClient, channel: str, last: int) -> list[int]:
    got: list[int] = []
    async with asyncio.timeout(10):
        async for item in client.publications():
            assert isinstance(item, Publication), item
            if item.channel == channel and item.offset is not None:
                got.append(item.offset)
                if item.offset >= last:
                    return got
    raise AssertionError("publications ended")


async def test_short_lived_tokens_are_renewed_with_no_gap(node: GatewayProcess) -> None:
    channel = "session:renewed"
    asked: list[float] = []
    errors: list[RequestError] = []
    ended: list[Unsubscribed] = []

    async def fresh(name: str) -> str:
        assert name == channel
        asked.append(time.time())
        return token("ann", ttl=3, channel=channel)

    client = RealtimeClient(
        node.ws,
        token("ann"),
        subscription_token=fresh,
        on_error=errors.append,
        on_unsubscribed=ended.append,
    )
    try:
        await client.connect()
        await client.subscribe(channel, token("ann", ttl=3, channel=channel))
        async with publishing(node, channel) as published:
            await asyncio.sleep(12)  # a 12 s subscription held by 3 s tokens
        got = await offsets_until(client, channel, published[-1])
    finally:
        await client.close()
    assert got == list(range(1, published[-1] + 1))  # every publication, once, in order
    assert len(asked) >= 4  # 3 s tokens over 12 s: renewed before each expiry
    assert (errors, ended) == ([], [])


async def test_an_expired_subscription_is_resumed_from_its_last_offset(
    node: GatewayProcess,
) -> None:
    channel = "session:resumed"
    calls = 0
    errors: list[RequestError] = []
    ended: list[Unsubscribed] = []

    def fresh(name: str) -> str:  # a plain function works too
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("token service down")  # so the first token runs out
        return token("ben", ttl=60, channel=name)

    client = RealtimeClient(
        node.ws,
        token("ben"),
        subscription_token=fresh,
        on_error=errors.append,
        on_unsubscribed=ended.append,
    )
    try:
        await client.connect()
        first = token("ben", ttl=2, channel=channel)
        await client.subscribe(channel, first)
        async with publishing(node, channel) as published:
            expires = float(time.time() // 1 + 2)
            await asyncio.sleep(max(0.0, expires - time.time()) + 1.0)
        got = await offsets_until(client, channel, published[-1])
    finally:
        await client.close()
    assert got == list(range(1, published[-1] + 1))  # nothing lost across the expiry
    assert calls == 2  # the failed renewal, then once more after `token_expired`
    assert [(e.code, e.request) for e in errors] == [("token_error", "sub_refresh")]
    assert ended == []


async def test_revoked_and_unrenewed_subscriptions_end(node: GatewayProcess) -> None:
    ended: list[Unsubscribed] = []
    client = RealtimeClient(
        node.ws, token("cid", ["kept", "dropped"]), on_unsubscribed=ended.append
    )
    try:
        await client.connect()
        await client.subscribe("session:kept")
        await client.subscribe("session:dropped")
        await client.subscribe("session:lent", token("cid", ttl=1, channel="session:lent"))
        await client.refresh(token("cid", ["kept"]))
        async with asyncio.timeout(5):
            while len(ended) < 2:
                await asyncio.sleep(0.05)
        assert client.channels == ["session:kept"]
    finally:
        await client.close()
    assert ended == [
        Unsubscribed("session:dropped", "revoked"),
        Unsubscribed("session:lent", "token_expired"),  # no callback to renew it
    ]
