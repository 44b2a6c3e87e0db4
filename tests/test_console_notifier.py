"""The notifier's operations API (notifier/ops_api.py) on a real Redis with a running worker:
dead letters requeued or discarded exactly once however many operators click, a notification's
timeline with each status change, and who may call it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import jwt
import orjson
import pytest
from archmesh_client.notifications import NotificationRequest

from notifier import keys
from shared.tokens import issue_token
from tests.fakes.push_endpoint import PushEndpoint
from tests.fakes.smtp import SmtpServer
from tests.fakes.twilio_api import TwilioApi
from tests.notifier_stack import Stack, notifier_stack
from tests.servers import JWT_SECRET, RedisServer

pytestmark = pytest.mark.redis

ADA = {
    "timezone": "Europe/Paris",
    "contacts": {"email": "ada@example.com"},
    "channels": {"default": {"in_app": True, "email": True}},
}


@pytest.fixture
async def stack(
    redis_server: RedisServer, smtp: SmtpServer, push: PushEndpoint, twilio: TwilioApi
) -> AsyncIterator[Stack]:
    smtp.clear()
    async with notifier_stack(redis_server.url, smtp, push, twilio) as s:
        yield s


def admin_token(admin: bool = True) -> str:
    now = int(time.time())
    claims = {"sub": "operator", "iat": now, "exp": now + 600, "admin": admin}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


async def dead_letter(stack: Stack, user_id: str, reason: str = "renderer crashed") -> str:
    """A dead letter as commit.lua writes one, holding a request that is fine now."""
    request = NotificationRequest(user_id=user_id, type="build_done", title="Build done")
    fields = {
        "request": request.model_dump_json(),
        "reason": reason,
        "entry": "1-0",
        "failed_at": str(int(time.time() * 1000)),
    }
    return str(await stack.notifier.redis.xadd(keys.DEAD_LETTERS, fields))  # type: ignore[arg-type]


def processed(stack: Stack, outcome: str) -> float:
    registry = stack.notifier.metrics.registry
    labels = {"outcome": outcome}
    return registry.get_sample_value("archmesh_notifier_requests_processed_total", labels) or 0


async def inbox_ids(stack: Stack, user_id: str, expected: int) -> list[str]:
    deadline = time.monotonic() + 10
    while True:
        items = (await stack.http.get(f"/api/users/{user_id}/inbox")).json()["items"]
        if len(items) >= expected or time.monotonic() > deadline:
            return [item["id"] for item in items]
        await asyncio.sleep(0.02)


async def test_a_dead_letter_is_requeued_once_however_many_requeue_it(stack: Stack) -> None:
    entry = await dead_letter(stack, "dl-one")
    listed = (await stack.http.get("/api/ops/dead-letters")).json()
    assert [(d["id"], d["reason"]) for d in listed["items"]] == [(entry, "renderer crashed")]
    assert listed["items"][0]["request"]["user_id"] == "dl-one"

    path = f"/api/ops/dead-letters/{entry}/requeue"
    replies = await asyncio.gather(*(stack.http.post(path) for _ in range(8)))
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200] + [404] * 7
    refused = next(r for r in replies if r.status_code == 404)
    assert refused.json()["error"]["code"] == "not_found"

    assert len(await inbox_ids(stack, "dl-one", 1)) == 1
    assert processed(stack, "accepted") == 1
    assert processed(stack, "duplicate") == 0  # one stream entry, not eight
    assert (await stack.http.get("/api/ops/dead-letters")).json()["total"] == 0


async def test_requeue_all_and_one_at_once_requeue_each_entry_once(stack: Stack) -> None:
    entries = [await dead_letter(stack, f"dl-{i}") for i in range(5)]
    one = stack.http.post(f"/api/ops/dead-letters/{entries[2]}/requeue")
    every = [stack.http.post("/api/ops/dead-letters/requeue") for _ in range(3)]
    replies = await asyncio.gather(one, *every)
    requeued = (replies[0].status_code == 200) + sum(r.json()["requeued"] for r in replies[1:])
    assert requeued == 5
    for i in range(5):
        assert len(await inbox_ids(stack, f"dl-{i}", 1)) == 1
    assert processed(stack, "accepted") == 5
    assert processed(stack, "duplicate") == 0


async def test_discard_removes_a_dead_letter_once(stack: Stack) -> None:
    kept, dropped = await dead_letter(stack, "dl-kept"), await dead_letter(stack, "dl-dropped")
    first = await stack.http.delete(f"/api/ops/dead-letters/{dropped}")
    again = await stack.http.delete(f"/api/ops/dead-letters/{dropped}")
    assert (first.status_code, again.status_code) == (200, 404)
    remaining = (await stack.http.get("/api/ops/dead-letters")).json()
    assert [d["id"] for d in remaining["items"]] == [kept]
    assert (await stack.http.post("/api/ops/dead-letters/discard")).json() == {"discarded": 1}
    bad = await stack.http.post("/api/ops/dead-letters/not-an-id/requeue")
    assert (bad.status_code, bad.json()["error"]["code"]) == (422, "validation_error")


async def test_the_timeline_shows_a_held_delivery_then_its_sending(stack: Stack) -> None:
    stack.clock.set(datetime(2026, 1, 15, 22, 30, tzinfo=UTC))  # 23:30 in Paris
    await stack.put_preferences("ada", **ADA, quiet_hours={"start": "22:00", "end": "07:00"})
    nid = await stack.send(
        user_id="ada", type="workflow_completed", title="Quiet one", channels=["in_app", "email"]
    )
    await stack.states(nid, in_app="sent", email="held")
    stack.clock.set(datetime(2026, 1, 16, 6, 0, 1, tzinfo=UTC))  # 07:00:01 in Paris
    await stack.states(nid, email="sent")

    reply = await stack.http.get(f"/api/ops/notifications/{nid}/timeline")
    assert reply.status_code == 200, reply.text
    events = reply.json()["events"]
    assert sorted((e["medium"], e["status"]) for e in events) == [
        ("email", "held"),
        ("email", "sent"),
        ("in_app", "sent"),
    ]
    email = [e for e in events if e["medium"] == "email"]
    assert [e["status"] for e in email] == ["held", "sent"]  # in the order they happened
    assert email[0]["at"].startswith("2026-01-15T22:30")
    assert email[0]["next_attempt_at"].startswith("2026-01-16T06:00:00")
    assert email[1]["at"].startswith("2026-01-16T06:00")
    ttl = await stack.notifier.redis.ttl(keys.timeline(nid))
    assert 0 < ttl <= stack.notifier.settings.notifier_retention
    missing = await stack.http.get("/api/ops/notifications/nope/timeline")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")


async def test_ops_api_takes_the_api_key_or_an_admin_token_never_a_user_token(
    stack: Stack,
) -> None:
    def bearer(token: str) -> dict[str, Any]:
        return {"Authorization": f"Bearer {token}"}

    ops = "/api/ops/queue"
    assert (await stack.http.get(ops)).status_code == 200  # the stack sends the API key
    assert (await stack.http.get(ops, headers=bearer(admin_token()))).status_code == 200
    cases = [
        ({"Authorization": ""}, 401, "unauthorized"),
        (bearer("not-the-key"), 401, "unauthorized"),
        (bearer(issue_token(JWT_SECRET, "ada")), 403, "forbidden"),
        (bearer(admin_token(admin=False)), 403, "forbidden"),
    ]
    for headers, status, code in cases:
        reply = await stack.http.get(ops, headers=headers)
        assert (reply.status_code, reply.json()["error"]["code"]) == (status, code)
    # The console acts through the service API with an admin token too; a user token, never.
    request = {"user_id": "ada", "type": "ping", "title": "Hi", "channels": ["in_app"]}
    sent = await stack.http.post("/api/notifications", json=request, headers=bearer(admin_token()))
    assert sent.status_code == 202, sent.text
    user = bearer(issue_token(JWT_SECRET, "ada"))
    refused = await stack.http.post("/api/notifications", json=request, headers=user)
    assert refused.status_code == 401
    queue = orjson.loads((await stack.http.get(ops)).content)
    assert queue["partitions"][0]["group"] == "notifiers"
