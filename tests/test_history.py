"""History pages: the `history` frame, `GET /api/channels/{channel}/history` and a backend's
`Publisher.history`, forwards and in reverse, with `limit` 0 and across an epoch change."""

from __future__ import annotations

from typing import Any

import httpx
from archmesh_client.publisher import connect_publisher
from archmesh_client.stream import StreamPosition

from tests.servers import API_KEY, GatewayProcess, RedisServer
from tests.wsclient import connect, recv_type, send


async def history(ws: Any, **frame: Any) -> dict[str, Any]:
    await send(ws, {"type": "history", "id": 9, **frame})
    return await recv_type(ws, "history")


def ns(reply: dict[str, Any]) -> list[int]:
    return [pub["data"]["n"] for pub in reply["publications"]]


async def test_history_frame_pages_forwards_and_in_reverse(
    gateways: list[GatewayProcess],
) -> None:
    node = GatewayProcess(ARCHMESH_HISTORY_MAX_LIMIT="4").start()
    gateways.append(node)
    epoch = ""
    for n in range(1, 11):
        epoch = node.publish("session:h", {"type": "t", "n": n}).json()["epoch"]
    ws = await connect(node.ws, "alice", sessions=["h", "h2"])
    first = await history(ws, channel="session:h", limit=3)
    assert (ns(first), first["offset"], first["epoch"], first["id"]) == ([1, 2, 3], 10, epoch, 9)
    assert [p["offset"] for p in first["publications"]] == [1, 2, 3]
    assert {p["epoch"] for p in first["publications"]} == {epoch}
    after = await history(ws, channel="session:h", limit=3, since={"offset": 3, "epoch": epoch})
    assert ns(after) == [4, 5, 6]
    capped = await history(ws, channel="session:h", limit=50, since={"offset": 3, "epoch": epoch})
    assert ns(capped) == [4, 5, 6, 7]  # ARCHMESH_HISTORY_MAX_LIMIT
    newest = await history(ws, channel="session:h", limit=3, reverse=True)
    assert ns(newest) == [10, 9, 8]
    older = await history(
        ws, channel="session:h", limit=3, reverse=True, since={"offset": 8, "epoch": epoch}
    )
    assert ns(older) == [7, 6, 5]
    oldest = await history(
        ws, channel="session:h", limit=3, reverse=True, since={"offset": 2, "epoch": epoch}
    )
    assert ns(oldest) == [1]
    only = await history(ws, channel="session:h", limit=0)
    assert (only["publications"], only["offset"], only["epoch"]) == ([], 10, epoch)
    empty = await history(ws, channel="session:h2", limit=5)
    assert (empty["publications"], empty["offset"]) == ([], 0)


async def test_history_frame_is_authorized_like_subscribe(gateways: list[GatewayProcess]) -> None:
    node = GatewayProcess().start()
    gateways.append(node)
    ws = await connect(node.ws, "alice", sessions=["mine"])
    await send(ws, {"type": "history", "channel": "session:other", "limit": 1, "id": 4})
    refused = await recv_type(ws, "error")
    assert (refused["code"], refused["id"]) == ("forbidden", 4)
    await send(ws, {"type": "history", "channel": "bad channel", "limit": 1, "id": 5})
    assert (await recv_type(ws, "error"))["code"] == "invalid_channel"
    await send(ws, {"type": "history", "channel": "session:mine", "limit": -1, "id": 6})
    assert (await recv_type(ws, "error"))["code"] == "bad_frame"
    own = await history(ws, channel="user:alice", limit=1)
    assert own["publications"] == []


async def test_history_across_an_epoch_change_is_an_empty_page_with_the_new_position(
    gateways: list[GatewayProcess],
) -> None:
    node = GatewayProcess().start()
    gateways.append(node)
    old = node.publish("session:e", {"type": "t", "n": 1}).json()["epoch"]
    node.stop()
    node = GatewayProcess(port=node.port).start()  # the memory broker starts a new epoch
    gateways.append(node)
    new = node.publish("session:e", {"type": "t", "n": 2}).json()["epoch"]
    assert new != old
    ws = await connect(node.ws, "alice", sessions=["e"])
    for reverse in (False, True):
        page = await history(
            ws, channel="session:e", limit=5, reverse=reverse, since={"offset": 1, "epoch": old}
        )
        assert (page["publications"], page["offset"], page["epoch"]) == ([], 1, new)
    fresh = await history(ws, channel="session:e", limit=5)
    assert ns(fresh) == [2]


async def test_http_history_api(gateways: list[GatewayProcess]) -> None:
    node = GatewayProcess(ARCHMESH_HISTORY_MAX_LIMIT="3").start()
    gateways.append(node)
    epoch = ""
    for n in range(1, 6):
        epoch = node.publish("session:api", {"type": "t", "n": n}).json()["epoch"]
    url = f"{node.http}/api/channels/session:api/history"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(timeout=5) as http:
        page = (await http.get(url, headers=auth)).json()
        assert (ns(page), page["offset"], page["epoch"], page["channel"]) == (
            [1, 2, 3],
            5,
            epoch,
            "session:api",
        )
        params = {"limit": "2", "since_offset": "4", "since_epoch": epoch, "reverse": "true"}
        assert ns((await http.get(url, headers=auth, params=params)).json()) == [3, 2]
        zero = (await http.get(url, headers=auth, params={"limit": "0"})).json()
        assert (zero["publications"], zero["offset"]) == ([], 5)
        denied = await http.get(url)
        assert denied.status_code == 401
        bad = await http.get(url, headers=auth, params={"limit": "-1"})
        assert (bad.status_code, bad.json()["error"]["code"]) == (422, "bad_request")
        half = await http.get(url, headers=auth, params={"since_offset": "1"})
        assert half.status_code == 422
        invalid = await http.get(f"{node.http}/api/channels/nope/history", headers=auth)
        assert (invalid.status_code, invalid.json()["error"]["code"]) == (422, "invalid_channel")


async def test_publisher_history_reads_what_the_gateway_pages(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    async with connect_publisher(redis_server.url) as publisher:
        positions = [await publisher.publish("session:p", {"type": "t", "n": n}) for n in range(5)]
        head = positions[-1]
        page = await publisher.history("session:p", 2)
        assert [p.data["n"] for p in page.publications] == [0, 1]
        assert page.position == head
        back = await publisher.history("session:p", 2, since=positions[3], reverse=True)
        assert [(p.offset, p.data["n"]) for p in back.publications] == [(3, 2), (2, 1)]
        after = await publisher.history("session:p", 10, since=positions[2])
        assert [p.data["n"] for p in after.publications] == [3, 4]
        assert (await publisher.history("session:p", 0)).publications == []
        gone = await publisher.history("session:p", 5, since=StreamPosition(1, "old"))
        assert (gone.publications, gone.position) == ([], head)
        redis_server.client().flushall()
        reset = await publisher.history("session:p", 5, since=head)
        assert reset.publications == []
        assert reset.position.epoch != head.epoch
    # The gateway reads the same history over the same keys.
    node = GatewayProcess(redis_server.url).start()
    gateways.append(node)
    published = node.publish("session:p", {"type": "t", "n": 9}).json()
    async with connect_publisher(redis_server.url) as publisher:
        latest = await publisher.history("session:p", 1, reverse=True)
    assert [(p.offset, p.epoch, p.data["n"]) for p in latest.publications] == [
        (published["offset"], published["epoch"], 9)
    ]
