"""`GET /sse`: channels over Server-Sent Events, read by a real HTTP streaming client against
real gateway processes: events and their ids, refusals, keepalive, expiry, drain, and a
reconnect with Last-Event-ID across a gateway restart (no gap, no duplicate)."""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import time
from collections.abc import Callable

import httpx
import pytest

from gateway.sse_position import decode_positions
from tests.servers import GatewayProcess, RedisServer, wait_until
from tests.sseclient import SseReader, open_sse
from tests.wsclient import connect, recv, recv_type, send, subscribe, token


async def until(predicate: Callable[[], object], timeout: float = 20.0) -> None:
    """Poll `predicate` without blocking the loop (readers run meanwhile); fail at `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_stream_delivers_channels_with_every_position_in_each_id(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url).start()
    gateways.append(node)
    tok = token("ann", sessions=["a"])
    async with open_sse(node.http, tok, ("session:a", "broadcast"), query_token=True) as sse:
        assert sse.response.status_code == 200
        assert sse.response.headers["content-type"].startswith("text/event-stream")
        connected = await sse.next_type("connected")
        assert connected.frame["user_id"] == "ann"
        assert connected.frame["transport"] == "sse"
        subscribed = {(await sse.next_type("subscribed")).frame["channel"] for _ in range(3)}
        assert subscribed == {"user:ann", "session:a", "broadcast"}
        assert node.metric("archmesh_transport_connections", 'transport="sse"') == 1
        node.publish("session:a", {"type": "t", "n": 1})
        node.publish("broadcast", {"type": "t", "n": 2})
        first = await sse.next_type("publication")
        second = await sse.next_type("publication")
        assert (first.frame["channel"], first.frame["data"]) == ("session:a", {"type": "t", "n": 1})
        assert (second.frame["channel"], second.frame["data"]) == (
            "broadcast",
            {"type": "t", "n": 2},
        )
        assert second.id is not None
        positions = decode_positions(second.id)
        assert positions is not None
        assert set(positions) == {"user:ann", "session:a", "broadcast"}
        assert positions["session:a"].offset == first.frame["offset"]
        assert positions["broadcast"].offset == second.frame["offset"]


@pytest.mark.parametrize(
    ("channels", "tok", "status", "code"),
    [
        (("session:b",), token("ann", sessions=["a"]), 403, "forbidden"),
        (("user:bob",), token("ann"), 403, "forbidden"),
        (("bad channel",), token("ann"), 400, "invalid_channel"),
        ((), None, 401, "invalid_token"),
        ((), "not-a-jwt", 401, "invalid_token"),
    ],
)
async def test_refusals_answer_with_a_status_and_a_json_error(
    redis_server: RedisServer,
    gateways: list[GatewayProcess],
    channels: tuple[str, ...],
    tok: str | None,
    status: int,
    code: str,
) -> None:
    if not gateways:
        gateways.append(GatewayProcess(redis_server.url).start())
    async with open_sse(gateways[0].http, tok, channels) as sse:
        await sse.response.aread()
        assert sse.response.status_code == status
        assert sse.response.json()["error"]["code"] == code


async def test_limits_subscriptions_and_connections_per_user(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(
        redis_server.url, ARCHMESH_USER_CONNECTION_LIMIT="1", ARCHMESH_MAX_SUBSCRIPTIONS="2"
    ).start()
    gateways.append(node)
    tok = token("ann", sessions=["a", "b"])
    async with open_sse(node.http, tok, ("session:a", "session:b")) as sse:
        await sse.response.aread()
        assert sse.response.status_code == 400
        assert sse.response.json()["error"]["code"] == "too_many_subscriptions"
    async with open_sse(node.http, tok, ("session:a",)) as sse:
        await sse.next_type("connected")
        async with open_sse(node.http, tok) as second:
            await second.response.aread()
            assert second.response.status_code == 429
            assert second.response.json()["error"]["code"] == "connection_limit"


async def test_keepalive_comments_and_token_expiry_ends_the_stream(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url, ARCHMESH_SSE_PING_INTERVAL="0.3").start()
    gateways.append(node)
    async with open_sse(node.http, token("ann", ttl=2)) as sse:
        disconnect = await sse.next_type("disconnect", timeout=10)
        assert disconnect.frame["code"] == 4004
        assert disconnect.frame["reconnect"]
        assert await sse.next() is None  # the response ended
        assert sse.comments.count("ping") >= 3


async def test_slow_consumer_is_ended(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url, ARCHMESH_CLIENT_QUEUE_BYTES="65536").start()
    gateways.append(node)
    async with open_sse(node.http, token("ann", sessions=["a"]), ("session:a",)) as sse:
        await sse.next_type("subscribed")
        await sse.next_type("subscribed")
        payload = {"type": "t", "blob": "x" * 60000}
        async with httpx.AsyncClient() as client:
            for _ in range(400):  # far beyond what loopback socket buffers hold
                await client.post(
                    f"{node.http}/api/publish",
                    json={"channel": "session:a", "data": payload},
                    headers={"Authorization": "Bearer test-api-key"},
                )
        received = 0
        while (event := await sse.next(timeout=20)) is not None:
            if event.frame["type"] == "disconnect":
                assert event.frame["code"] == 4001
                break
            received += 1
        else:
            pytest.fail("the stream ended without telling why")
        assert received < 400


async def reader_offsets(sse: SseReader, seen: list[tuple[str, int]], want: int) -> None:
    while len(seen) < want:
        event = await sse.next(timeout=20)
        if event is None:
            return
        if event.frame["type"] == "publication":
            seen.append((event.frame["channel"], event.frame["offset"]))
        elif event.frame["type"] == "subscribed":
            assert event.frame.get("recovered", True), event.frame


async def test_last_event_id_recovers_every_channel_across_a_restart(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    """Publications before, during (node down) and after a restart, on two channels: the
    stream read across the restart has each exactly once, in order."""
    first = GatewayProcess(redis_server.url).start()
    gateways.append(first)
    channels = ("session:a", "broadcast")
    tok = token("ann", sessions=["a"])
    seen: list[tuple[str, int]] = []
    published = 0
    async with open_sse(first.http, tok, channels) as sse:
        for n in range(10):
            first.publish(channels[n % 2], {"type": "t", "n": n})
            published += 1
        await reader_offsets(sse, seen, 10)
        last_id = sse.last_id
        first.stop(signal.SIGTERM)
        ended = await _rest(sse)
        assert any(e == 4000 for e in ended)  # drained: told to reconnect
    second = GatewayProcess(redis_server.url)
    helper = GatewayProcess(redis_server.url).start()  # publishes while the stream is down
    gateways.extend([second, helper])
    for n in range(10, 30):
        helper.publish(channels[n % 2], {"type": "t", "n": n})
        published += 1
    second.start()
    assert last_id is not None
    async with open_sse(second.http, tok, channels, last_event_id=last_id) as sse:
        for n in range(30, 40):
            second.publish(channels[n % 2], {"type": "t", "n": n})
            published += 1
        await reader_offsets(sse, seen, published)
    per_channel = {c: [o for ch, o in seen if ch == c] for c in channels}
    duplicates = len(seen) - len(set(seen))
    gaps = sum(
        1 for offsets in per_channel.values() for a, b in itertools.pairwise(offsets) if b != a + 1
    )
    print(f"published={published} received={len(seen)} duplicates={duplicates} gaps={gaps}")
    assert (len(seen), duplicates, gaps) == (published, 0, 0)
    assert all(offsets == sorted(offsets) for offsets in per_channel.values())


async def test_ten_channels_recovered_side_by_side_each_once_in_order_while_publishing(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    """A stream of ten channels reopened with its Last-Event-ID while every channel keeps
    getting publications: the channels are recovered side by side (gateway/sse.py `open`),
    and each still has every publication exactly once, in offset order."""
    node = GatewayProcess(redis_server.url).start()
    gateways.append(node)
    sessions = [f"t{i}" for i in range(10)]
    channels = tuple(f"session:{s}" for s in sessions)
    tok = token("ann", sessions=sessions)
    seen: list[tuple[str, int]] = []
    published = 0
    async with open_sse(node.http, tok, channels) as sse:
        for channel in channels:
            node.publish(channel, {"type": "t"})
            published += 1
        await reader_offsets(sse, seen, published)
        last_id = sse.last_id
    for n in range(30):  # missed while the stream is closed
        node.publish(channels[n % 10], {"type": "t"})
        published += 1
    stop = asyncio.Event()

    async def publish_more() -> int:
        count = 0
        while not stop.is_set():
            await asyncio.to_thread(node.publish, channels[count % 10], {"type": "t"})
            count += 1
        return count

    racing = asyncio.create_task(publish_more())
    assert last_id is not None
    async with open_sse(node.http, tok, channels, last_event_id=last_id) as sse:
        await asyncio.sleep(0.3)  # publications during and after the recovery
        stop.set()
        published += await racing
        await reader_offsets(sse, seen, published)
    per_channel = {c: [o for ch, o in seen if ch == c] for c in channels}
    assert len(seen) == published
    assert all(offsets == list(range(1, len(offsets) + 1)) for offsets in per_channel.values())


async def _rest(sse: SseReader) -> list[int]:
    codes: list[int] = []
    while (event := await sse.next(timeout=20)) is not None:
        if event.frame["type"] == "disconnect":
            codes.append(event.frame["code"])
    return codes


async def test_unreadable_last_event_id_subscribes_fresh(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url).start()
    gateways.append(node)
    node.publish("broadcast", {"type": "t", "n": 0})
    async with open_sse(node.http, token("ann"), ("broadcast",), last_event_id="!!") as sse:
        subscribed = [(await sse.next_type("subscribed")).frame for _ in range(2)]
        assert all("recovered" not in frame for frame in subscribed)


async def test_a_trimmed_position_is_told_as_not_recovered(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url).start()
    gateways.append(node)
    tok = token("ann")
    async with open_sse(node.http, tok, ("broadcast",)) as sse:
        await sse.next_type("subscribed")
        node.publish("broadcast", {"type": "t", "n": 0})
        await sse.next_type("publication")
        last_id = sse.last_id
    assert last_id is not None
    stale = last_id  # an epoch that no longer exists after the stream is deleted
    redis_server.client().flushall()
    node.publish("broadcast", {"type": "t", "n": 1})
    async with open_sse(node.http, tok, ("broadcast",), last_event_id=stale) as sse:
        frames = [(await sse.next_type("subscribed")).frame for _ in range(2)]
        broadcast = next(f for f in frames if f["channel"] == "broadcast")
        assert broadcast["recovered"] is False
        assert broadcast["reason"]


async def test_a_client_that_never_reads_is_ended_as_a_slow_consumer(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    """A stream whose client stopped reading its socket is ended as a slow consumer once its
    queue is full, and cut when its response will not take the last event: its place is freed
    and counted, while a stream and a WebSocket that read on the same channel get every
    publication, in order, and stay open."""
    node = GatewayProcess(redis_server.url, ARCHMESH_CLIENT_QUEUE_BYTES="1048576").start()
    gateways.append(node)
    sse_count = 'transport="sse"'
    tok = token("ann", ["a"])
    async with open_sse(node.http, tok, ("session:a",)) as good:
        await good.next_type("subscribed")
        await good.next_type("subscribed")
        ws = await connect(node.ws, "bob", sessions=["a"])
        assert (await subscribe(ws, "session:a"))["type"] == "subscribed"
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", node.port))
        try:
            sock.sendall(
                f"GET /sse?channel=session:a&token={tok} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            wait_until(lambda: node.metric("archmesh_transport_connections", sse_count) == 2)
            by_sse: list[int] = []
            by_ws: list[int] = []

            async def read_sse() -> None:
                while (event := await good.next(timeout=30)) is not None:
                    if event.frame["type"] == "publication":
                        by_sse.append(event.frame["offset"])

            async def read_ws() -> None:
                while True:
                    frame = await recv(ws, timeout=30)
                    if frame["type"] == "publication":
                        by_ws.append(frame["offset"])

            readers = [asyncio.ensure_future(read_sse()), asyncio.ensure_future(read_ws())]
            offsets: list[int] = []
            async with httpx.AsyncClient() as client:
                for n in range(1000):  # until the slow one is gone: far beyond socket buffers
                    reply = await client.post(
                        f"{node.http}/api/publish",
                        json={"channel": "session:a", "data": {"type": "t", "blob": "x" * 60000}},
                        headers={"Authorization": "Bearer test-api-key"},
                    )
                    offsets.append(reply.json()["offset"])
                    if n % 50 == 49 and node.metric("archmesh_disconnects_total", 'code="4001"'):
                        break
            await until(lambda: node.metric("archmesh_transport_connections", sse_count) == 1)
            assert node.metric("archmesh_disconnects_total", 'code="4001"') == 1
            await until(lambda: len(by_sse) >= len(offsets) and len(by_ws) >= len(offsets))
            for task in readers:
                assert not task.done(), task  # neither reader's connection ended
                task.cancel()
            print(f"published={len(offsets)} sse={len(by_sse)} ws={len(by_ws)}")
            assert by_sse == offsets
            assert by_ws == offsets
        finally:
            sock.close()


async def test_history_lost_is_told_with_the_new_position_in_its_id(
    private_redis: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(private_redis.url).start()
    gateways.append(node)
    async with open_sse(node.http, token("ann", ["h"]), ("session:h",)) as sse:
        await sse.next_type("subscribed")
        await sse.next_type("subscribed")
        node.publish("session:h", {"type": "t"})
        assert (await sse.next_type("publication")).frame["offset"] == 1
        private_redis.stop(signal.SIGKILL)
        private_redis.start()
        notice = await sse.next_type("subscribed", timeout=20)
        assert notice.frame["reason"] == "history_lost"
        assert notice.id is not None
        positions = decode_positions(notice.id)
        assert positions is not None
        told = positions[notice.frame["channel"]]
        assert (told.offset, told.epoch) == (notice.frame["offset"], notice.frame["epoch"])


async def test_control_api_acts_on_streams_and_a_revoked_token_cannot_reopen(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url).start()
    gateways.append(node)
    tok = token("cat", ["c"])

    def control(command: str, body: dict[str, object]) -> None:
        reply = httpx.post(
            f"{node.http}/api/control/{command}",
            json=body,
            headers={"Authorization": "Bearer test-api-key"},
            timeout=5,
        )
        assert reply.status_code == 200, reply.text

    async with open_sse(node.http, tok) as sse:
        await sse.next_type("subscribed")
        control("subscribe", {"user": "cat", "channel": "session:extra"})
        added = await sse.next_type("subscribed")
        assert added.frame["channel"] == "session:extra"
        node.publish("session:extra", {"type": "t"})
        assert (await sse.next_type("publication")).frame["channel"] == "session:extra"
        control("unsubscribe", {"user": "cat", "channel": "session:extra", "reason": "removed"})
        ended = await sse.next_type("unsubscribed")
        assert ended.frame == {
            "type": "unsubscribed",
            "channel": "session:extra",
            "reason": "removed",
        }
        control("revoke", {"user": "cat", "before": int(time.time()) + 1})
        disconnect = await sse.next_type("disconnect")
        assert disconnect.frame["code"] == 4503
        assert await sse.next() is None
    async with open_sse(node.http, tok) as again:
        await again.response.aread()
        assert again.response.status_code == 403
        assert again.response.json()["error"]["code"] == "token_revoked"


async def test_subscription_tokens_grant_sessions_until_their_exp(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    """Sessions the claims do not allow, granted by subscription tokens (a header and a query
    parameter): the one whose token expires ends with `unsubscribed` (token_expired) and drops
    out of the event ids, the stream and its other channels carry on."""
    node = GatewayProcess(redis_server.url, ARCHMESH_JWT_LEEWAY="0").start()
    gateways.append(node)
    tok = token("dan")
    short = token("dan", ttl=2, channel="session:g1")
    long = token("dan", channel="session:g2")
    async with open_sse(
        node.http,
        tok,
        ("session:g1",),
        headers={"X-Subscription-Token": short},
        params=[("subscription_token", long)],
    ) as sse:
        assert sse.response.status_code == 200
        subscribed = {(await sse.next_type("subscribed")).frame["channel"] for _ in range(3)}
        assert subscribed == {"user:dan", "session:g1", "session:g2"}
        node.publish("session:g1", {"type": "t", "n": 1})
        assert (await sse.next_type("publication")).frame["channel"] == "session:g1"
        ended = await sse.next(timeout=10)
        assert ended is not None
        assert ended.frame == {
            "type": "unsubscribed",
            "channel": "session:g1",
            "reason": "token_expired",
        }
        node.publish("session:g1", {"type": "t", "n": 2})
        node.publish("session:g2", {"type": "t", "n": 3})
        after = await sse.next()
        assert after is not None
        assert (after.frame["channel"], after.frame["data"]["n"]) == ("session:g2", 3)
        assert after.id is not None
        positions = decode_positions(after.id)
        assert positions is not None
        assert set(positions) == {"user:dan", "session:g2"}


async def test_subscription_tokens_that_grant_nothing_refuse_the_stream(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url).start()
    gateways.append(node)
    tok = token("dan")
    revoked = token("dan", channel="session:r", jti="sub-revoked-1")
    reply = httpx.post(
        f"{node.http}/api/control/revoke",
        json={"jti": "sub-revoked-1"},
        headers={"Authorization": "Bearer test-api-key"},
        timeout=5,
    )
    assert reply.status_code == 200, reply.text
    refused = [
        token("eve", channel="session:x"),  # another user's
        token("dan", ttl=-60, channel="session:x"),  # expired
        "not-a-jwt",
        revoked,
    ]
    for sub_token in refused:
        async with open_sse(node.http, tok, headers={"X-Subscription-Token": sub_token}) as sse:
            await sse.response.aread()
            assert sse.response.status_code == 403, sub_token
            assert sse.response.json()["error"]["code"] == "forbidden"
    # A session without a token is refused; one given its token, and that token alone, opens.
    async with open_sse(node.http, tok, ("session:ok",)) as sse:
        await sse.response.aread()
        assert sse.response.status_code == 403
    granted = token("dan", channel="session:ok")
    async with open_sse(node.http, tok, params=[("subscription_token", granted)]) as sse:
        subscribed = {(await sse.next_type("subscribed")).frame["channel"] for _ in range(2)}
        assert subscribed == {"user:dan", "session:ok"}


async def test_streams_are_announced_and_told_joins_and_leaves_across_two_nodes(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    """A stream on node B subscribing a join/leave channel is announced to a WebSocket on
    node A, gets its own join and A's join/leave as named events (no id: no position), and
    its end is announced as a leave."""
    env = {"ARCHMESH_JOIN_LEAVE": "session:"}
    a = GatewayProcess(redis_server.url, **env).start()
    b = GatewayProcess(redis_server.url, **env).start()
    gateways += [a, b]
    fay = await connect(a.ws, "fay", sessions=["jl"])
    assert (await subscribe(fay, "session:jl"))["type"] == "subscribed"
    fay_id = (await recv_type(fay, "join"))["client_id"]
    async with open_sse(b.http, token("gus", ["jl"]), ("session:jl",)) as sse:
        gus_id = (await sse.next_type("connected")).frame["client_id"]
        own = await sse.next_type("join")
        assert own.name == "join"
        assert own.id is None
        assert own.frame == {
            "type": "join",
            "channel": "session:jl",
            "user_id": "gus",
            "client_id": gus_id,
        }
        joined = await recv_type(fay, "join")
        assert (joined["user_id"], joined["client_id"]) == ("gus", gus_id)
        offset = a.publish("session:jl", {"type": "t"}).json()["offset"]
        assert (await sse.next_type("publication")).frame["offset"] == offset
        assert (await recv_type(fay, "publication"))["offset"] == offset
        await send(fay, {"type": "unsubscribe", "channel": "session:jl", "id": 3})
        assert (await recv_type(fay, "unsubscribed"))["id"] == 3
        left = await sse.next_type("leave")
        assert left.name == "leave"
        assert left.frame == {
            "type": "leave",
            "channel": "session:jl",
            "user_id": "fay",
            "client_id": fay_id,
        }
        assert (await subscribe(fay, "session:jl"))["type"] == "subscribed"
        await recv_type(fay, "join")
        assert (await sse.next_type("join")).frame["client_id"] == fay_id
    # The stream's end is a leave.
    assert await recv_type(fay, "leave", timeout=10) == {
        "type": "leave",
        "channel": "session:jl",
        "user_id": "gus",
        "client_id": gus_id,
    }
