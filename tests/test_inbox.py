"""The inbox's seen, read and archived marks, its live counts, its pages and filters, and the
actions on an item: the notifier on a real Redis, through its HTTP API, the live events read
back from a real pub/sub subscription and from the user channel's history."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from notifier import keys
from notifier.schemas import ItemMarks
from shared.tokens import issue_token
from tests.fakes.push_endpoint import PushEndpoint
from tests.fakes.smtp import SmtpServer
from tests.fakes.twilio_api import TwilioApi
from tests.notifier_stack import Stack, notifier_stack
from tests.servers import JWT_SECRET, RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
async def stack(
    redis_server: RedisServer, smtp: SmtpServer, push: PushEndpoint, twilio: TwilioApi
) -> AsyncIterator[Stack]:
    async with notifier_stack(redis_server.url, smtp, push, twilio) as s:
        yield s


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


async def fill(stack: Stack, user: str, count: int, **extra: Any) -> list[str]:
    """`count` in-app notifications for `user` (oldest first), all in the inbox on return."""
    ids = [f"{user}-{extra.get('type', 't')}-{i}-{random.randrange(10**9)}" for i in range(count)]
    batch = [
        {"id": i, "user_id": user, "type": "t", "title": i, "channels": ["in_app"], **extra}
        for i in ids
    ]
    reply = await stack.http.post("/api/notifications/batch", json={"notifications": batch})
    assert reply.json()["successful"] == count, reply.text
    await inbox_holds(stack, user, set(ids))
    return ids


async def inbox_holds(stack: Stack, user: str, ids: set[str]) -> None:
    deadline = asyncio.get_running_loop().time() + 15
    while asyncio.get_running_loop().time() < deadline:
        page = await get_page(stack, user, limit=500, archived="all")
        if ids <= {item["id"] for item in page["items"]}:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{len(ids)} items never reached {user}'s inbox")


async def get_page(stack: Stack, user: str, **params: Any) -> dict[str, Any]:
    reply = await stack.http.get(f"/api/users/{user}/inbox", params=params)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


async def events(store: aioredis.Redis, user: str) -> list[tuple[int, dict[str, Any]]]:
    """The user channel's history: (offset, event), oldest first."""
    entries = await store.xrange(f"rt:{{user:{user}}}:history")
    return [(int(entry_id.split("-")[0]), orjson.loads(f["d"])) for entry_id, f in entries]


async def store_counts(store: aioredis.Redis, user: str) -> dict[str, int]:
    box = keys.inbox(user)
    return {"unseen": await store.scard(box.unseen), "unread": await store.scard(box.unread)}


async def test_two_clients_marking_at_once_never_drift_and_the_last_event_is_the_store(
    stack: Stack, store: aioredis.Redis
) -> None:
    ids = await fill(stack, "hal", 200)
    listener = store.pubsub()
    await listener.subscribe("rt:{user:hal}")
    first_offset = (await events(store, "hal"))[-1][0]
    assert (await events(store, "hal"))[-1][1]["unseen"] == 200

    async def client(seed: int) -> None:
        """150 single marks and 2 bulk ones in random order, 20 in flight at a time."""
        rng = random.Random(seed)
        calls: list[tuple[str, dict[str, Any] | None]] = []
        for item in rng.sample(ids, 150):
            mark = rng.choice(["seen", "seen", "read", "archive", "unarchive"])
            calls.append((f"/api/users/hal/inbox/{item}/{mark}", None))
        for _ in range(2):
            body = {"ids": rng.sample(ids, 20)}
            calls.append((f"/api/users/hal/inbox/{rng.choice(['seen', 'read'])}", body))
        rng.shuffle(calls)
        slots = asyncio.Semaphore(20)
        transport = httpx.ASGITransport(app=stack.notifier.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://notifier", headers=stack.http.headers
        ) as http:

            async def call(path: str, body: dict[str, Any] | None) -> None:
                async with slots:
                    reply = await http.post(path, json=body)
                assert reply.status_code == 200, reply.text
                counts = reply.json()
                assert 0 <= counts["unseen"] <= counts["unread"] <= 250

            await asyncio.gather(*(call(path, body) for path, body in calls))

    async def arrivals() -> None:
        """50 new items while the clients mark (the ledger's commit publishes them)."""
        for _ in range(5):
            await fill(stack, "hal", 10)

    await asyncio.gather(client(1), client(2), arrivals())

    final = await store_counts(store, "hal")
    assert 50 < final["unseen"] < final["unread"] < 250  # the seeds leave some of each
    page = await get_page(stack, "hal", limit=500, archived="all")
    assert {"unseen": page["unseen"], "unread": page["unread"]} == final
    items = page["items"]
    assert sum(not i["seen"] for i in items) == final["unseen"]
    assert sum(not i["read"] for i in items) == final["unread"]
    assert all(i["read"] for i in items if i["archived"])
    assert all(i["seen"] for i in items if i["read"])
    # Every change of the counts was published once, in order, each with the store's counts
    # at that moment: consecutive events differ, never below zero, and the last is the store.
    published = [(o, e) for o, e in await events(store, "hal") if o > first_offset]
    assert [o for o, _ in published] == list(
        range(first_offset + 1, first_offset + 1 + len(published))
    )
    counts = [(e["unseen"], e["unread"]) for _, e in published]
    assert all(0 <= a <= b for a, b in counts)
    assert sum(e["type"] == "notification" for _, e in published) == 50
    # Replayed, the events tell one consistent story: an arrival adds one to both counts, a
    # mark lowers one or both, and nothing changes without an event.
    for (before, after), (_, event) in zip(
        itertools.pairwise([(200, 200), *counts]), published, strict=True
    ):
        if event["type"] == "notification":
            assert after == (before[0] + 1, before[1] + 1), event
        else:
            assert event["type"] == "inbox"
            assert after != before, event
            assert (after[0] <= before[0], after[1] <= before[1]) == (True, True), event
    assert counts[-1] == (final["unseen"], final["unread"])
    live: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + 10
    while len(live) < len(published) and asyncio.get_running_loop().time() < deadline:
        message = await listener.get_message(ignore_subscribe_messages=True, timeout=1)
        if message is not None:
            live.append(orjson.loads(message["data"].split(":", 2)[2]))
    assert live == [e for _, e in published]  # what subscribers got, in the same order
    await listener.aclose()


async def test_marks_seen_read_archive_and_unarchive_one_bulk_and_all(
    stack: Stack, store: aioredis.Redis
) -> None:
    a, b, c, d = await fill(stack, "ivy", 4)
    assert await stack.notifier.inbox.marks("ivy", a) == ItemMarks(
        seen=False, read=False, archived=False
    )
    assert (await stack.http.post(f"/api/users/ivy/inbox/{a}/seen")).json() == {
        "unseen": 3,
        "unread": 4,
    }
    assert await stack.notifier.inbox.marks("ivy", a) == ItemMarks(
        seen=True, read=False, archived=False
    )
    before = len(await events(store, "ivy"))
    again = await stack.http.post(f"/api/users/ivy/inbox/{a}/seen")
    assert again.json() == {"unseen": 3, "unread": 4}
    assert len(await events(store, "ivy")) == before  # nothing changed: no event
    bulk = await stack.http.post("/api/users/ivy/inbox/seen", json={"ids": [b, "nope", b]})
    assert bulk.json() == {"unseen": 2, "unread": 4, "unknown": ["nope"]}
    archived = await stack.http.post(f"/api/users/ivy/inbox/{c}/archive")
    assert archived.json() == {"unseen": 1, "unread": 3}  # archived implies read
    assert await stack.notifier.inbox.marks("ivy", c) == ItemMarks(
        seen=True, read=True, archived=True
    )
    listed = await get_page(stack, "ivy")
    assert [i["id"] for i in listed["items"]] == [d, b, a]
    only = await get_page(stack, "ivy", archived="true")
    assert [i["id"] for i in only["items"]] == [c]
    await stack.http.post(f"/api/users/ivy/inbox/{c}/unarchive")
    assert [i["id"] for i in (await get_page(stack, "ivy"))["items"]] == [d, c, b, a]
    assert (await stack.notifier.inbox.marks("ivy", c)) == ItemMarks(
        seen=True, read=True, archived=False
    )
    everything = await stack.http.post("/api/users/ivy/inbox/archive", json={"all": True})
    assert everything.json() == {"unseen": 0, "unread": 0, "unknown": []}
    assert (await get_page(stack, "ivy"))["items"] == []
    await stack.http.post("/api/users/ivy/inbox/unarchive", json={"all": True})
    assert len((await get_page(stack, "ivy"))["items"]) == 4
    one = (await stack.http.get(f"/api/users/ivy/inbox/{d}")).json()
    assert (one["id"], one["seen"], one["read"], one["archived"]) == (d, True, True, False)
    assert await stack.notifier.inbox.marks("ivy", "nope") is None


async def test_unknown_items_are_404_and_bad_input_422(stack: Stack) -> None:
    await fill(stack, "jo", 1)
    for mark in ("seen", "read", "archive", "unarchive"):
        reply = await stack.http.post(f"/api/users/jo/inbox/missing/{mark}")
        assert reply.status_code == 404, mark
        assert reply.json()["error"]["code"] == "not_found"
    assert (await stack.http.get("/api/users/jo/inbox/missing")).status_code == 404
    bad_bodies: list[Any] = [{}, {"ids": []}, {"ids": ["a"], "all": True}, {"ids": ["a b"]}, []]
    bad_bodies.append({"ids": [f"x{i}" for i in range(501)]})
    for body in bad_bodies:
        reply = await stack.http.post("/api/users/jo/inbox/read", json=body)
        assert reply.status_code == 422, body
    for params in ({"cursor": "garbage"}, {"archived": "maybe"}, {"limit": "0"}, {"type": "A B"}):
        reply = await stack.http.get("/api/users/jo/inbox", params=params)
        assert reply.status_code == 422, params
        assert "code" in reply.json()["error"]
    forged = "WyIxIGFuZCAxIiwiYSJd"  # ["1 and 1","a"]
    assert (await stack.http.get(f"/api/users/jo/inbox?cursor={forged}")).status_code == 422


async def test_a_user_token_marks_only_its_own_inbox(stack: Stack) -> None:
    (item,) = await fill(stack, "kim", 1)
    mine = {"Authorization": f"Bearer {issue_token(JWT_SECRET, 'kim')}"}
    theirs = {"Authorization": f"Bearer {issue_token(JWT_SECRET, 'lee')}"}
    assert (await stack.http.post(f"/api/users/kim/inbox/{item}/seen", headers=mine)).is_success
    refused = await stack.http.post(f"/api/users/kim/inbox/{item}/archive", headers=theirs)
    assert refused.status_code == 403
    bulk = await stack.http.post(
        "/api/users/kim/inbox/seen", json={"all": True}, headers={"Authorization": ""}
    )
    assert bulk.status_code == 401


async def test_pages_newest_first_miss_and_repeat_nothing_while_new_items_arrive(
    stack: Stack,
) -> None:
    old = await fill(stack, "max", 23)
    seen: list[str] = []
    arrived: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        page = await get_page(stack, "max", **params)
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        arrived += await fill(stack, "max", 2)  # newer: never inside the pages that follow
    assert seen == list(reversed(old))
    newest = await get_page(stack, "max", limit=len(arrived))
    assert [i["id"] for i in newest["items"]] == list(reversed(arrived))
    assert newest["next_cursor"] is not None
    full = await get_page(stack, "max", limit=500)
    assert full["next_cursor"] is None
    assert len(full["items"]) == 23 + len(arrived)


async def test_filters_by_type_and_archived_page_through_the_matches(stack: Stack) -> None:
    alerts = await fill(stack, "ned", 6, type="alert")
    digests = await fill(stack, "ned", 6, type="digest")
    await stack.http.post("/api/users/ned/inbox/archive", json={"ids": alerts[:2] + digests[:1]})
    got: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"type": "alert", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = await get_page(stack, "ned", **params)
        assert all(i["type"] == "alert" and not i["archived"] for i in page["items"])
        got += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert got == list(reversed(alerts[2:]))
    both = await get_page(stack, "ned", type=["alert", "digest"], archived="true")
    assert [i["id"] for i in both["items"]] == [digests[0], alerts[1], alerts[0]]
    every = await get_page(stack, "ned", archived="all", limit=100)
    assert len(every["items"]) == 12


async def test_actions_are_validated_stored_and_sent_live(
    stack: Stack, store: aioredis.Redis
) -> None:
    good = [
        {"id": "approve", "label": "Approve", "url": "https://app.example.com/r/1?ok=1"},
        {"id": "open", "label": "Open the session", "url": "/sessions/abc"},
    ]
    (item,) = await fill(stack, "ola", 1, actions=good)
    stored = (await stack.http.get(f"/api/users/ola/inbox/{item}")).json()
    assert stored["actions"] == good
    assert (await events(store, "ola"))[-1][1]["actions"] == good
    bad_actions: list[list[dict[str, Any]]] = [
        [{"id": "x", "label": "X", "url": "javascript:alert(1)"}],
        [{"id": "x", "label": "X", "url": "http://plain.example.com"}],
        [{"id": "x", "label": "X", "url": "//evil.example.com/path"}],
        [{"id": "x", "label": "X", "url": "data:text/html,hi"}],
        [{"id": "x", "label": "X", "url": "/a b"}],
        [{"id": "x", "label": "X", "url": "https://"}],
        [{"id": "x", "label": " ", "url": "/a"}],
        [{"id": "X!", "label": "X", "url": "/a"}],
        [{"id": "x", "label": "X" * 61, "url": "/a"}],
        [{"id": "x", "label": "X", "url": "/" + "a" * 2000}],
        [{"id": "x", "label": "X", "url": "/a", "style": "red"}],
        [{"id": "x", "label": "X", "url": "/a"}, {"id": "x", "label": "Y", "url": "/b"}],
        [{"id": f"a{i}", "label": "A", "url": "/a"} for i in range(4)],
    ]
    for actions in bad_actions:
        request = {"user_id": "ola", "type": "t", "title": "x", "actions": actions}
        reply = await stack.http.post("/api/notifications", json=request)
        assert reply.status_code == 422, actions
        assert reply.json()["error"]["code"] == "validation_error"


async def test_items_of_the_same_instant_page_by_id_none_missed_or_repeated(
    stack: Stack, store: aioredis.Redis
) -> None:
    """Two replicas may commit items with the very same time: the cursor orders them by id."""
    (template,) = await fill(stack, "pia", 1)
    box = keys.inbox("pia")
    payload = orjson.loads(await store.hget(box.items, template))
    score = await store.zscore(box.order, template)
    ids = [f"same-{i:03d}" for i in range(250)]
    await store.hset(box.items, mapping={i: orjson.dumps({**payload, "id": i}) for i in ids})
    await store.zadd(box.order, dict.fromkeys(ids, score))
    got: list[str] = []
    cursor = None
    while True:
        page = await get_page(stack, "pia", limit=40, **({"cursor": cursor} if cursor else {}))
        got += [item["id"] for item in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    expected = sorted([*ids, template], reverse=True)  # equal times: Redis orders by id
    assert got == expected
