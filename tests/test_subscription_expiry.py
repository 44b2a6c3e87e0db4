"""A subscription a subscription token granted lasts until that token's `exp`: `sub_refresh`
extends it, and without one the gateway ends it (`unsubscribed`, reason `token_expired`) while
the connection stays open. A connection `refresh` re-evaluates every session subscription
against the new claims (`unsubscribed`, reason `revoked`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.servers import GatewayProcess, RedisServer
from tests.wsclient import assert_silent, connect, recv, recv_type, send, subscribe, token

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(shared_redis: RedisServer) -> Iterator[GatewayProcess]:
    # No leeway: a token's `exp` is the moment, with no grace on either side.
    gateway = GatewayProcess(shared_redis.url, ARCHMESH_JWT_LEEWAY="0").start()
    yield gateway
    gateway.stop()


def grant(user: str, channel: str, ttl: float) -> str:
    return token(user, ttl=ttl, channel=channel)


def exp(jwt_token: str) -> int:
    value: int = jwt.decode(jwt_token, options={"verify_signature": False})["exp"]
    return value


async def published(ws: Any, node: GatewayProcess, channel: str, n: int) -> dict[str, Any]:
    assert node.publish(channel, {"type": "t", "n": n}).status_code == 200
    frame = await recv_type(ws, "publication")
    assert (frame["channel"], frame["data"]["n"]) == (channel, n), frame
    return frame


async def test_a_subscription_ends_at_its_tokens_exp_and_the_connection_stays(
    node: GatewayProcess,
) -> None:
    ws = await connect(node.ws, "alice")
    sub = grant("alice", "session:exp1", ttl=2)
    assert (await subscribe(ws, "session:exp1", token=sub))["type"] == "subscribed"
    await published(ws, node, "session:exp1", 1)

    frame = await recv(ws, timeout=exp(sub) - time.time() + 2)
    assert frame == {"type": "unsubscribed", "channel": "session:exp1", "reason": "token_expired"}
    assert time.time() >= exp(sub) - 0.05  # not before the token's exp

    await send(ws, {"type": "ping", "id": 3})
    assert await recv(ws) == {"type": "pong", "id": 3}
    assert node.publish("session:exp1", {"type": "t", "n": 2}).status_code == 200
    await assert_silent(ws, 0.5)
    # The user's own channel still delivers: only that one subscription ended.
    await published(ws, node, "user:alice", 3)


async def test_sub_refresh_keeps_the_subscription_past_the_first_exp(
    node: GatewayProcess,
) -> None:
    ws = await connect(node.ws, "bob")
    first = grant("bob", "session:exp2", ttl=2)
    assert (await subscribe(ws, "session:exp2", token=first))["type"] == "subscribed"

    second = grant("bob", "session:exp2", ttl=4)
    await send(ws, {"type": "sub_refresh", "channel": "session:exp2", "token": second, "id": 9})
    assert await recv(ws) == {
        "type": "sub_refreshed",
        "channel": "session:exp2",
        "expires_at": exp(second),
        "id": 9,
    }
    await assert_silent(ws, exp(first) - time.time() + 0.5)  # the first exp passes quietly
    await published(ws, node, "session:exp2", 1)

    # The refreshed grant ends in its turn (the timer moved, it did not vanish).
    frame = await recv(ws, timeout=exp(second) - time.time() + 2)
    assert frame == {"type": "unsubscribed", "channel": "session:exp2", "reason": "token_expired"}


async def test_a_refresh_revokes_the_sessions_the_new_claims_do_not_allow(
    node: GatewayProcess,
) -> None:
    ws = await connect(node.ws, "carol", sessions=["rev-a", "rev-b"])
    for channel in ("session:rev-a", "session:rev-b"):
        assert (await subscribe(ws, channel))["type"] == "subscribed"
    held = grant("carol", "session:rev-c", ttl=600)
    assert (await subscribe(ws, "session:rev-c", token=held))["type"] == "subscribed"

    await send(ws, {"type": "refresh", "token": token("carol", ["rev-b"]), "id": 4})
    assert await recv(ws) == {
        "type": "unsubscribed",
        "channel": "session:rev-a",
        "reason": "revoked",
    }
    assert (await recv(ws))["type"] == "refreshed"

    assert node.publish("session:rev-a", {"type": "t", "n": 0}).status_code == 200
    await published(ws, node, "session:rev-b", 1)  # still allowed by the new claims
    await published(ws, node, "session:rev-c", 2)  # held by its subscription token
    await assert_silent(ws)


async def test_bad_sub_refresh_frames_get_errors_and_change_nothing(
    node: GatewayProcess,
) -> None:
    ws = await connect(node.ws, "dave", sessions=["own"])
    channel = "session:exp3"
    reply = await subscribe(ws, channel, token=grant("dave", channel, ttl=600))
    assert reply["type"] == "subscribed"
    assert (await subscribe(ws, "session:own"))["type"] == "subscribed"

    cases: list[tuple[dict[str, Any], str]] = [
        ({"channel": channel, "token": "garbage"}, "invalid_token"),
        ({"channel": channel, "token": grant("eve", channel, 600)}, "invalid_token"),
        ({"channel": channel, "token": grant("dave", "session:other", 600)}, "invalid_token"),
        ({"channel": channel, "token": grant("dave", channel, -30)}, "invalid_token"),
        ({"channel": channel, "token": token("dave", ["exp3"])}, "invalid_token"),
        (
            {"channel": "session:nowhere", "token": grant("dave", "session:nowhere", 600)},
            "not_subscribed",
        ),
        (
            {"channel": "session:own", "token": grant("dave", "session:own", 600)},
            "no_subscription_token",
        ),
        ({"channel": channel}, "bad_frame"),
    ]
    for n, (fields, code) in enumerate(cases):
        await send(ws, {"type": "sub_refresh", "id": n, **fields})
        reply = await recv_type(ws, "error")
        assert (reply["code"], reply["id"]) == (code, n), (fields, reply)

    await published(ws, node, channel, 1)  # the subscription is as it was
