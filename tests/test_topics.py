"""Topics: subscriptions through the API (the user's own token or the API key) and the Python
client, a topic request fanned out to every subscriber through their own preferences, a replica
killed mid-fan-out, and an erasure that leaves the user's topics."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from archmesh_client.notifier import NotifierClient

from notifier import keys
from shared.tokens import issue_token
from tests.fakes.push_endpoint import PushEndpoint
from tests.fakes.smtp import SmtpServer
from tests.fakes.twilio_api import TwilioApi
from tests.notifier_stack import Stack, notifier_stack
from tests.servers import JWT_SECRET, NotifierProcess, RedisServer

pytestmark = pytest.mark.redis

TOPIC = "project:42"


@pytest.fixture
async def stack(
    redis_server: RedisServer, smtp: SmtpServer, push: PushEndpoint, twilio: TwilioApi
) -> AsyncIterator[Stack]:
    async with notifier_stack(redis_server.url, smtp, push, twilio, notifier_topic_batch=2) as s:
        yield s


def as_user(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(JWT_SECRET, user)}"}


async def test_users_subscribe_with_their_own_token_and_services_with_the_api_key(
    stack: Stack, redis_server: RedisServer
) -> None:
    http = stack.http
    mine = await http.put(f"/api/users/kim/topics/{TOPIC}", headers=as_user("kim"))
    assert mine.status_code == 200, mine.text
    assert mine.json() == {"user_id": "kim", "topic": TOPIC, "subscribed": True, "changed": True}
    again = await http.put(f"/api/users/kim/topics/{TOPIC}", headers=as_user("kim"))
    assert again.json()["changed"] is False
    service = await http.put(f"/api/users/lee/topics/{TOPIC}")  # the API key
    assert service.json()["changed"] is True
    await http.put("/api/users/lee/topics/release-train")
    theirs = await http.put(f"/api/users/lee/topics/{TOPIC}", headers=as_user("kim"))
    assert theirs.status_code == 403
    assert theirs.json()["error"]["code"] == "forbidden"
    peek = await http.get("/api/users/lee/topics", headers=as_user("kim"))
    assert peek.status_code == 403
    listed = await http.get("/api/users/lee/topics", headers=as_user("lee"))
    assert listed.json() == {"user_id": "lee", "topics": ["project:42", "release-train"]}
    bad = await http.put("/api/users/kim/topics/a{b}", headers=as_user("kim"))
    assert (bad.status_code, bad.json()["error"]["code"]) == (422, "validation_error")
    anonymous = await http.get(f"/api/topics/{TOPIC}/subscribers", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    refused = await http.get(f"/api/topics/{TOPIC}/subscribers", headers=as_user("kim"))
    assert refused.status_code == 401  # a user token does not list a topic's subscribers

    # The Python client writes the same layout; pages walk the topic by cursor.
    async with NotifierClient(redis_server.url) as client:
        assert await client.subscribe("ann", TOPIC) is True
        assert await client.topics("ann") == [TOPIC]
        with pytest.raises(ValueError, match="topic"):
            await client.subscribe("ann", "a{b}")  # braces would break the keys' hash tag
        assert await client.unsubscribe("ann", "release-train") is False
        first = await client.subscribers(TOPIC, limit=2)
        assert (first.users, first.next_cursor) == (["ann", "kim"], "kim")
        rest = await client.subscribers(TOPIC, first.next_cursor, limit=2)
        assert (rest.users, rest.next_cursor) == (["lee"], None)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await http.get(f"/api/topics/{TOPIC}/subscribers", params=params)).json()
        seen += page["users"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["ann", "kim", "lee"]

    gone = await http.delete(f"/api/users/kim/topics/{TOPIC}", headers=as_user("kim"))
    assert gone.json() == {"user_id": "kim", "topic": TOPIC, "subscribed": False, "changed": True}
    left = await http.get(f"/api/topics/{TOPIC}/subscribers")
    assert left.json() == {"topic": TOPIC, "users": ["ann", "lee"], "next_cursor": None}


async def test_a_request_is_for_one_user_or_one_topic(
    stack: Stack, redis_server: RedisServer
) -> None:
    both = {"user_id": "kim", "topic": TOPIC, "type": "t", "title": "x"}
    reply = await stack.http.post("/api/notifications", json=both)
    assert (reply.status_code, reply.json()["error"]["code"]) == (422, "validation_error")
    stray = {"user_id": "kim", "exclude": ["lee"], "type": "t", "title": "x"}
    assert (await stack.http.post("/api/notifications", json=stray)).status_code == 422
    piped = {"id": "a|b", "topic": TOPIC, "type": "t", "title": "x"}
    assert (await stack.http.post("/api/notifications", json=piped)).status_code == 422
    # Queued straight on Redis, a topic request with an unknown template is dead-lettered once,
    # not once per subscriber.
    await stack.http.put(f"/api/users/kim/topics/{TOPIC}")
    async with NotifierClient(redis_server.url) as client:
        await client.send({"id": "tpl", "topic": TOPIC, "type": "t", "template": "nope"})
    store = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        deadline = time.monotonic() + 10
        while not (dead := await store.xrange(keys.DEAD_LETTERS)):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        [(_, fields)] = dead
        assert fields["reason"] == "unknown template 'nope'"
        assert not await store.exists(keys.fanout(TOPIC, "tpl"))
    finally:
        await store.aclose()


async def test_a_topic_request_reaches_each_subscriber_once_through_their_own_preferences(
    stack: Stack,
) -> None:
    users = ["ann", "bob", "cat", "dan", "eve"]
    for user in users:
        prefs: dict[str, Any] = {"contacts": {"email": f"{user}@example.com"}}
        if user == "cat":
            prefs["channels"] = {"comment_added": {"email": False}}
        await stack.put_preferences(user, **prefs)
        reply = await stack.http.put(f"/api/users/{user}/topics/{TOPIC}")
        assert reply.status_code == 200
    request = {
        "id": "c1",
        "topic": TOPIC,
        "exclude": ["dan"],  # the actor
        "type": "comment_added",
        "title": "New comment on project 42",
        "channels": ["in_app", "email"],
    }
    assert (await stack.http.post("/api/notifications", json=request)).status_code == 202
    for user in ("ann", "bob", "eve"):
        await stack.states(f"c1|{user}", in_app="sent", email="sent")
    await stack.states("c1|cat", in_app="sent", email="suppressed")  # her email is off
    assert (await stack.http.get("/api/notifications/c1|dan")).status_code == 404
    dan = await stack.http.get("/api/users/dan/inbox")
    assert dan.json()["items"] == []
    ann = (await stack.http.get("/api/users/ann/inbox")).json()["items"]
    assert [(i["id"], i["title"]) for i in ann] == [("c1|ann", "New comment on project 42")]
    subjects = [m.message["Subject"] for m in stack.smtp.messages]
    recipients = sorted(
        m.rcpt_tos[0] for m in stack.smtp.messages if "project 42" in m.message["Subject"]
    )
    assert recipients == ["ann@example.com", "bob@example.com", "eve@example.com"], subjects

    # The same request again (a retrying backend) is acknowledged and fans out nothing.
    registry = stack.notifier.metrics.registry

    def processed(outcome: str) -> float | None:
        name = "archmesh_notifier_requests_processed_total"
        return registry.get_sample_value(name, {"outcome": outcome})

    assert (await stack.http.post("/api/notifications", json=request)).status_code == 202
    await _until(lambda: processed("topic") == 2)
    assert processed("accepted") == 4
    assert processed("duplicate") == 0
    assert len(stack.smtp.messages) == len(subjects)


async def test_erasure_removes_the_users_topic_subscriptions(
    stack: Stack, redis_server: RedisServer
) -> None:
    for topic in (TOPIC, "release-train"):
        for user in ("ann", "bob"):
            assert (await stack.http.put(f"/api/users/{user}/topics/{topic}")).status_code == 200
    assert (await stack.http.delete("/api/users/bob")).status_code == 204
    for topic in (TOPIC, "release-train"):
        page = (await stack.http.get(f"/api/topics/{topic}/subscribers")).json()
        assert page["users"] == ["ann"]
    assert (await stack.http.get("/api/users/bob/topics")).json()["topics"] == []
    store = aioredis.Redis.from_url(redis_server.url)
    try:
        assert not await store.exists(keys.user_topics("bob"))
    finally:
        await store.aclose()


async def _until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition never held")
        await asyncio.sleep(0.02)


SUBSCRIBERS = 5000


async def test_a_replica_killed_mid_fan_out_leaves_every_subscriber_notified_exactly_once(
    redis_server: RedisServer,
) -> None:
    store = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    users = [f"s{n:05d}" for n in range(SUBSCRIBERS)]
    async with store.pipeline(transaction=False) as pipe:
        pipe.zadd(keys.topic_subscribers(TOPIC), dict.fromkeys(users, 0))
        for user in users:
            pipe.sadd(keys.user_topics(user), TOPIC)
        await pipe.execute()
    env = {"ARCHMESH_NOTIFIER_CLAIM_IDLE": "1", "ARCHMESH_NOTIFIER_TOPIC_BATCH": "10"}
    started: list[NotifierProcess] = []
    try:
        victim = NotifierProcess(redis_server.url, **env).start()
        started.append(victim)
        request = {"id": "big", "topic": TOPIC, "exclude": ["s00007"], "type": "t", "title": "x"}
        async with NotifierClient(redis_server.url) as client:
            await client.send(request)
        job = keys.fanout(TOPIC, "big")
        deadline = time.monotonic() + 30
        while await store.hget(job, "cursor") is None and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        victim.stop(signal.SIGKILL)
        cursor, state = await store.hmget(job, ["cursor", "state"])
        assert cursor is not None  # it had started...
        assert state != "done", cursor  # ...and was killed mid-way
        started.append(NotifierProcess(redis_server.url, **env).start())
        expected = [u for u in users if u != "s00007"]
        deadline = time.monotonic() + 60
        while await store.hget(job, "state") != "done" or await _delivered(store) < len(expected):
            assert time.monotonic() < deadline, await _delivered(store)
            await asyncio.sleep(0.1)
        # Each subscriber's user channel got exactly one notification (a duplicate would have
        # published a second event), and the excluded one none.
        async with store.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.xlen(f"rt:{{user:{user}}}:history")
            lengths = dict(zip(users, await pipe.execute(), strict=True))
        assert lengths.pop("s00007") == 0
        assert set(lengths.values()) == {1}
        assert await _delivered(store) == len(expected)
        assert await store.xlen(keys.DEAD_LETTERS) == 0
    finally:
        for process in started:
            process.stop(signal.SIGKILL)
        await store.aclose()


async def _delivered(store: aioredis.Redis) -> int:
    """In-app deliveries recorded sent (the analytics count each processed request once)."""
    total = 0
    async for key in store.scan_iter("nt:stats:*"):
        total += int(await store.hget(key, "t|in_app|sent") or 0)
    return total
