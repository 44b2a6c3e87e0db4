"""The own `user:` channel is recovered from the first moment: `connected` carries its position
and `connect` takes a `since` for it, recovered like a subscribe's."""

from __future__ import annotations

import asyncio

from tests.servers import GatewayProcess, RedisServer
from tests.wsclient import assert_silent, open_ws, recv_type, send, token


async def connect_since(url: str, user: str, since: dict[str, object] | None) -> tuple:
    ws = await open_ws(url)
    frame: dict[str, object] = {"type": "connect", "token": token(user), "id": 1}
    if since is not None:
        frame["since"] = since
    await send(ws, frame)
    return ws, await recv_type(ws, "connected")


async def test_connected_carries_the_own_position_and_connect_since_recovers_it(
    gateways: list[GatewayProcess],
) -> None:
    node = GatewayProcess().start()
    gateways.append(node)
    ws, first = await connect_since(node.ws, "carol", None)
    assert (first["offset"], first["id"], "recovered" in first) == (0, 1, False)
    epoch = first["epoch"]
    assert epoch
    await ws.close()
    # Published while the client was away, before it ever saw a publication there.
    for n in range(3):
        node.publish("user:carol", {"type": "t", "n": n}).raise_for_status()
    ws, again = await connect_since(node.ws, "carol", {"offset": 0, "epoch": epoch})
    assert (again["recovered"], again["offset"], again["epoch"]) == (True, 3, epoch)
    missed = [await recv_type(ws, "publication") for _ in range(3)]
    assert [(p["channel"], p["offset"], p["data"]["n"]) for p in missed] == [
        ("user:carol", 1, 0),
        ("user:carol", 2, 1),
        ("user:carol", 3, 2),
    ]
    node.publish("user:carol", {"type": "t", "n": 3}).raise_for_status()
    assert (await recv_type(ws, "publication"))["offset"] == 4
    await assert_silent(ws)
    lost, reply = await connect_since(node.ws, "carol", {"offset": 2, "epoch": "gone"})
    assert (reply["recovered"], reply["reason"], reply["offset"]) == (False, "epoch_changed", 4)
    await assert_silent(lost)
    _, reply = await connect_since(node.ws, "carol", {"offset": 9, "epoch": epoch})
    assert (reply["recovered"], reply["reason"]) == (False, "unknown_position")


async def test_a_connect_while_redis_is_down_is_let_in_without_a_position() -> None:
    """Where the own channel stands needs Redis; a client connecting during an outage is let
    in without that position (as before positions existed), not closed."""
    from tests.servers import RedisServer

    redis = RedisServer()
    redis.start()
    node = GatewayProcess(
        redis.url, ARCHMESH_REDIS_PING_INTERVAL="0.2", ARCHMESH_REDIS_PING_TIMEOUT="0.5"
    )
    try:
        node.start()
        redis.stop()
        ws = await open_ws(node.ws)
        await send(ws, {"type": "connect", "token": token("olga"), "id": 1})
        connected = await recv_type(ws, "connected", timeout=10)
        assert connected["user_id"] == "olga"
        assert "offset" not in connected
        assert "epoch" not in connected
        await send(ws, {"type": "ping", "id": 2})
        assert (await recv_type(ws, "pong"))["id"] == 2  # the connection stays usable
    finally:
        node.stop()
        redis.cleanup()


async def test_a_connect_reads_its_own_channel_once(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    """The node subscribes to a new own channel and its first member's read tells both where it
    stands (gateway/membership.py): one history read per connect, not one for the node before
    subscribing and one for the client after. Each client still gets what follows, once."""
    node = GatewayProcess(redis_server.url).start()
    gateways.append(node)
    issued = 'outcome="issued"'
    before = node.metric("archmesh_history_reads_total", issued)
    users = [f"once-{n}" for n in range(20)]
    opened = await asyncio.gather(*(connect_since(node.ws, user, None) for user in users))
    assert node.metric("archmesh_history_reads_total", issued) - before == len(users)
    for user, (_, connected) in zip(users, opened, strict=True):
        assert connected["offset"] == 0
        node.publish(f"user:{user}", {"type": "t", "to": user}).raise_for_status()
    for user, (ws, _) in zip(users, opened, strict=True):
        pub = await recv_type(ws, "publication")
        assert (pub["channel"], pub["offset"], pub["data"]["to"]) == (f"user:{user}", 1, user)
        await assert_silent(ws, 0.05)
