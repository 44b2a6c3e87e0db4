"""`latest` on subscribe: the channel's latest publication right after `subscribed`, asked per
subscribe or by default for ARCHMESH_LATEST_ON_SUBSCRIBE prefixes; never twice with `since`."""

from __future__ import annotations

from tests.servers import GatewayProcess
from tests.wsclient import assert_silent, connect, open_ws, recv_type, send, subscribe, token


async def test_latest_delivers_the_last_publication_once_and_nothing_on_an_empty_channel(
    gateways: list[GatewayProcess],
) -> None:
    node = GatewayProcess().start()
    gateways.append(node)
    ws = await connect(node.ws, "alice", sessions=["empty", "full"])
    empty = await subscribe(ws, "session:empty", latest=True)
    assert (empty["type"], empty["offset"], "latest" in empty) == ("subscribed", 0, False)
    for n in range(3):
        node.publish("session:full", {"type": "t", "n": n}).raise_for_status()
    reply = await subscribe(ws, "session:full", latest=True)
    assert (reply["type"], reply["offset"], reply["latest"]) == ("subscribed", 3, True)
    latest = await recv_type(ws, "publication")
    assert (latest["offset"], latest["data"]) == (3, {"type": "t", "n": 2})
    node.publish("session:full", {"type": "t", "n": 3}).raise_for_status()
    live = await recv_type(ws, "publication")
    assert (live["offset"], live["data"]) == (4, {"type": "t", "n": 3})
    plain = await subscribe(ws, "session:full")  # without `latest`: only the position
    assert plain["offset"] == 4
    await assert_silent(ws)


async def test_latest_with_since_adds_nothing_when_recovered_and_the_latest_when_not(
    gateways: list[GatewayProcess],
) -> None:
    node = GatewayProcess().start()
    gateways.append(node)
    epoch = ""
    for n in range(4):
        epoch = node.publish("session:s", {"type": "t", "n": n}).json()["epoch"]
    ws = await connect(node.ws, "alice", sessions=["s"])
    reply = await subscribe(ws, "session:s", since={"offset": 2, "epoch": epoch}, latest=True)
    assert reply["recovered"] is True
    offsets = [(await recv_type(ws, "publication"))["offset"] for _ in range(2)]
    assert offsets == [3, 4]
    await assert_silent(ws)
    current = await subscribe(ws, "session:s", since={"offset": 4, "epoch": epoch}, latest=True)
    assert current["recovered"] is True
    await assert_silent(ws)
    lost = await subscribe(ws, "session:s", since={"offset": 1, "epoch": "gone"}, latest=True)
    assert (lost["recovered"], lost["reason"]) == (False, "epoch_changed")
    assert (await recv_type(ws, "publication"))["data"] == {"type": "t", "n": 3}
    await assert_silent(ws)


async def test_latest_is_the_default_for_configured_prefixes(
    gateways: list[GatewayProcess],
) -> None:
    node = GatewayProcess(ARCHMESH_LATEST_ON_SUBSCRIBE="session:").start()
    gateways.append(node)
    node.publish("session:d", {"type": "t", "n": 1}).raise_for_status()
    node.publish("user:bob", {"type": "t", "n": 2}).raise_for_status()
    ws = await connect(node.ws, "bob", sessions=["d"])
    assert (await subscribe(ws, "session:d"))["type"] == "subscribed"
    assert (await recv_type(ws, "publication"))["data"] == {"type": "t", "n": 1}
    assert (await subscribe(ws, "session:d", latest=False))["type"] == "subscribed"
    await assert_silent(ws)
    # The list of `connect` too.
    other = await open_ws(node.ws)
    await send(other, {"type": "connect", "token": token("bob", ["d"]), "subscribe": ["session:d"]})
    assert (await recv_type(other, "connected"))["user_id"] == "bob"
    assert (await recv_type(other, "subscribed"))["channel"] == "session:d"
    assert (await recv_type(other, "publication"))["data"] == {"type": "t", "n": 1}
