"""The notifier on a real Redis, delivering to a real SMTP server, a local push service that
decrypts what it gets, and a local Twilio API; driven through its HTTP API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
from archmesh_client.notifier import NotifierClient

from shared.tokens import issue_token
from tests.fakes.push_endpoint import PushEndpoint
from tests.fakes.smtp import SmtpServer
from tests.fakes.twilio_api import TwilioApi
from tests.notifier_stack import Stack, notifier_stack
from tests.servers import JWT_SECRET, RedisServer

pytestmark = pytest.mark.redis

ADA = {
    "timezone": "Europe/Paris",
    "contacts": {"email": "ada@example.com", "phone": "+14155550100"},
    "channels": {"default": {"in_app": True, "email": True, "push": True, "sms": True}},
}


@pytest.fixture
async def stack(
    redis_server: RedisServer, smtp: SmtpServer, push: PushEndpoint, twilio: TwilioApi
) -> AsyncIterator[Stack]:
    smtp.clear()
    async with notifier_stack(redis_server.url, smtp, push, twilio) as s:
        yield s


def emails_to(smtp: SmtpServer, subject: str) -> list[Any]:
    return [m for m in smtp.messages if m.message["Subject"] == subject]


async def test_every_channel_delivers_to_its_real_peer(stack: Stack) -> None:
    sub = stack.push.new_subscription()
    await stack.put_preferences(
        "ada", **{**ADA, "contacts": {**ADA["contacts"], "push_subscriptions": [sub.as_dict()]}}
    )
    nid = await stack.send(
        user_id="ada",
        type="workflow_failed",
        title="Design failed",
        body="The design stage failed.\n\nOpen the session to see why.",
        priority="normal",
    )
    status = await stack.states(nid, in_app="sent", email="sent", push="sent", sms="sent")
    assert status["email"]["attempts"] == 1
    [mail] = emails_to(stack.smtp, "Design failed")
    assert mail.rcpt_tos == ("ada@example.com",)
    parts = {p.get_content_type(): p.get_content() for p in mail.message.iter_parts()}
    assert "Open the session to see why." in parts["text/plain"]
    assert "<p>Open the session to see why.</p>" in parts["text/html"]
    [pushed] = stack.push.received_for(sub)
    assert pushed.payload["title"] == "Design failed"
    assert pushed.payload["id"] == nid
    assert pushed.urgency == "normal"
    assert pushed.ttl == stack.notifier.settings.push_ttl
    assert pushed.claims is not None
    assert pushed.claims["aud"] == stack.push.origin
    sms = [m for m in stack.twilio.messages if m.to == "+14155550100"]
    assert [m.body for m in sms] == [
        "Design failed: The design stage failed.\n\nOpen the session to see why."
    ]


async def test_unknown_user_gets_defaults_in_app_only(stack: Stack) -> None:
    nid = await stack.send(user_id="nobody", type="workflow_completed", title="Done")
    status = await stack.states(nid, in_app="sent", email="suppressed", sms="suppressed")
    assert status["email"]["last_error"] == "no email address"
    assert status["sms"]["last_error"] == "disabled in the user's preferences"
    inbox = (await stack.http.get("/api/users/nobody/inbox")).json()
    assert [i["id"] for i in inbox["items"]] == [nid]


async def test_quiet_hours_hold_external_channels_until_the_window_ends(stack: Stack) -> None:
    # 23:30 in Paris (UTC+1 in January).
    stack.clock.set(datetime(2026, 1, 15, 22, 30, tzinfo=UTC))
    await stack.put_preferences("ada", **ADA, quiet_hours={"start": "22:00", "end": "07:00"})
    nid = await stack.send(
        user_id="ada", type="workflow_completed", title="Quiet one", channels=["in_app", "email"]
    )
    held = await stack.states(nid, in_app="sent", email="held")
    assert held["email"]["next_attempt_at"].startswith("2026-01-16T06:00:00")
    urgent = await stack.send(
        user_id="ada",
        type="workflow_failed",
        title="Loud one",
        priority="urgent",
        channels=["email"],
    )
    await stack.states(urgent, email="sent")
    assert emails_to(stack.smtp, "Quiet one") == []
    stack.clock.set(datetime(2026, 1, 16, 6, 0, 1, tzinfo=UTC))  # 07:00:01 in Paris
    await stack.states(nid, email="sent")
    assert len(emails_to(stack.smtp, "Quiet one")) == 1


async def test_quiet_hours_drop_policy_suppresses(stack: Stack) -> None:
    stack.clock.set(datetime(2026, 1, 15, 22, 30, tzinfo=UTC))
    await stack.put_preferences(
        "ada", **ADA, quiet_hours={"start": "22:00", "end": "07:00"}, held="drop"
    )
    nid = await stack.send(user_id="ada", type="x", title="Dropped", channels=["in_app", "email"])
    status = await stack.states(nid, in_app="sent", email="suppressed")
    assert "quiet hours" in status["email"]["last_error"]


async def test_preferences_are_set_patched_and_change_delivery(stack: Stack) -> None:
    await stack.put_preferences("ada", **ADA)
    patch = {"channels": {"workflow_review_required": {"email": False}}, "timezone": "Asia/Tokyo"}
    reply = await stack.http.patch("/api/users/ada/preferences", json=patch)
    assert reply.status_code == 200
    saved = (await stack.http.get("/api/users/ada/preferences")).json()
    assert saved["timezone"] == "Asia/Tokyo"
    assert saved["channels"]["default"]["sms"] is True  # merged, not replaced
    assert saved["contacts"]["email"] == "ada@example.com"
    nid = await stack.send(
        user_id="ada", type="workflow_review_required", title="Review", channels=["email", "sms"]
    )
    status = await stack.states(nid, email="suppressed", sms="sent")
    assert status["email"]["last_error"] == "disabled in the user's preferences"
    bad = await stack.http.patch("/api/users/ada/preferences", json={"timezone": "Nowhere/City"})
    assert bad.status_code == 422
    assert bad.json()["error"]["fields"][0]["loc"] == ["timezone"]


async def test_user_tokens_open_only_their_own_preferences_and_inbox(stack: Stack) -> None:
    token = issue_token(JWT_SECRET, "ada")
    mine = {"Authorization": f"Bearer {token}"}
    assert (await stack.http.get("/api/users/ada/inbox", headers=mine)).status_code == 200
    other = await stack.http.get("/api/users/bob/preferences", headers=mine)
    assert other.status_code == 403
    assert other.json()["error"]["code"] == "forbidden"
    # A user token cannot send notifications or read statuses: those are for services.
    sent = await stack.http.post("/api/notifications", json={}, headers=mine)
    assert sent.status_code == 401
    bad = await stack.http.get("/api/users/ada/inbox", headers={"Authorization": "Bearer x.y.z"})
    assert bad.json()["error"]["code"] == "invalid_token"
    assert (
        await stack.http.get("/api/users/ada/inbox", headers={"Authorization": ""})
    ).status_code == 401


async def test_templates_are_validated_on_save_and_render_per_channel(stack: Stack) -> None:
    broken = {"channels": {"email": {"subject": "{{ stage", "text": "x"}}}
    reply = await stack.http.put("/api/templates/review", json=broken)
    assert reply.status_code == 422
    assert reply.json()["error"]["code"] == "invalid_template"
    assert "email.subject" in reply.json()["error"]["message"]
    template = {
        "channels": {
            "in_app": {"title": "Review {{ stage }}", "body": "Session {{ session }}"},
            "email": {
                "subject": "Review {{ stage }}",
                "text": "Hello, {{ stage }} needs you.",
                "html": "<p>{{ stage }} needs <b>you</b></p>",
            },
            "sms": {"text": "{{ stage }} needs {{ who }}"},
        }
    }
    assert (await stack.http.put("/api/templates/review", json=template)).status_code == 200
    await stack.put_preferences("ada", **ADA)
    nid = await stack.send(
        user_id="ada",
        type="workflow_review_required",
        template="review",
        data={"stage": "<design>", "session": "s1"},
        channels=["in_app", "email", "sms"],
    )
    status = await stack.states(nid, in_app="sent", email="sent", sms="failed")
    assert "who" in status["sms"]["last_error"]  # undefined variable: that channel fails
    [mail] = emails_to(stack.smtp, "Review <design>")
    html = mail.message.get_body(("html",)).get_content()
    assert "&lt;design&gt; needs <b>you</b>" in html
    inbox = (await stack.http.get("/api/users/ada/inbox")).json()
    assert inbox["items"][0]["title"] == "Review <design>"
    unknown = await stack.http.post(
        "/api/notifications", json={"user_id": "ada", "type": "x", "template": "nope"}
    )
    assert unknown.status_code == 422
    assert unknown.json()["error"]["code"] == "unknown_template"


async def test_batch_reports_each_item_and_one_bad_item_fails_alone(stack: Stack) -> None:
    items = [
        {"user_id": "ada", "type": "a", "title": "one"},
        {"user_id": "ada", "type": "BAD TYPE", "title": "two"},
        {"user_id": "ada", "type": "a"},
        {"user_id": "bob", "type": "a", "title": "four", "priority": "high"},
    ]
    reply = await stack.http.post("/api/notifications/batch", json={"notifications": items})
    body = reply.json()
    assert (body["total"], body["successful"], body["failed"]) == (4, 2, 2)
    assert [r["ok"] for r in body["results"]] == [True, False, False, True]
    assert body["results"][1]["error"]["fields"][0]["loc"] == ["type"]
    for result in (body["results"][0], body["results"][3]):
        await stack.states(result["id"], in_app="sent")
    too_many = await stack.http.post("/api/notifications/batch", json={"notifications": []})
    assert too_many.status_code == 422


async def test_transient_failures_are_retried_then_succeed(stack: Stack) -> None:
    phone = "+14155550111"
    await stack.put_preferences("ada", **{**ADA, "contacts": {"phone": phone}})
    stack.twilio.fail(phone, 503)
    nid = await stack.send(user_id="ada", type="a", title="Retry me", channels=["sms"])
    retrying = await stack.states(nid, sms="retrying")
    assert retrying["sms"]["last_error"]
    stack.twilio.succeed(phone)
    done = await stack.states(nid, sms="sent")
    assert done["sms"]["attempts"] >= 2
    assert [m.body for m in stack.twilio.messages if m.to == phone] == ["Retry me"]


def exhausted(stack: Stack, channel: str) -> float:
    registry = stack.notifier.metrics.registry
    return (
        registry.get_sample_value("archmesh_notifier_retries_exhausted_total", {"channel": channel})
        or 0.0
    )


async def test_transient_failures_give_up_after_the_limit(stack: Stack) -> None:
    phone = "+14155550112"
    await stack.put_preferences("ada", **{**ADA, "contacts": {"phone": phone}})
    stack.twilio.fail(phone, 500)
    nid = await stack.send(user_id="ada", type="a", title="Doomed", channels=["sms"])
    status = await stack.states(nid, sms="failed")
    assert status["sms"]["attempts"] == 3
    assert status["sms"]["last_error"].startswith("gave up after 3 attempts")
    assert exhausted(stack, "sms") == 1
    stack.twilio.succeed(phone)


async def test_permanent_sms_errors_are_not_retried(stack: Stack) -> None:
    phone = "+14155550113"
    await stack.put_preferences("ada", **{**ADA, "contacts": {"phone": phone}})
    stack.twilio.fail(phone, 400, code=21610)
    nid = await stack.send(user_id="ada", type="a", title="Unsubscribed", channels=["sms"])
    status = await stack.states(nid, sms="failed")
    assert status["sms"]["attempts"] == 1
    assert "21610" in status["sms"]["last_error"]
    stack.twilio.succeed(phone)
    assert exhausted(stack, "sms") == 0  # refused for good at once: no retry was exhausted


async def test_gone_push_subscriptions_are_pruned(stack: Stack) -> None:
    alive, gone = stack.push.new_subscription(), stack.push.new_subscription()
    contacts = {"push_subscriptions": [alive.as_dict(), gone.as_dict()]}
    await stack.put_preferences("ada", **{**ADA, "contacts": contacts})
    stack.push.answer(gone, 410)
    nid = await stack.send(user_id="ada", type="a", title="Prune", channels=["push"])
    await stack.states(nid, push="sent")
    saved = (await stack.http.get("/api/users/ada/preferences")).json()
    assert [s["endpoint"] for s in saved["contacts"]["push_subscriptions"]] == [alive.endpoint]
    stack.push.answer(alive, 404)
    nid = await stack.send(user_id="ada", type="a", title="All gone", channels=["push"])
    status = await stack.states(nid, push="failed")
    assert status["push"]["attempts"] == 1
    saved = (await stack.http.get("/api/users/ada/preferences")).json()
    assert saved["contacts"]["push_subscriptions"] == []


async def test_the_delivery_loop_outlives_an_unexpected_error(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's Cluster client has raised others than Redis's errors while it re-learns the
    slot map: the loop that claims due jobs logs it and goes on (it used to end for good)."""
    deliverer = stack.notifier.worker._deliverer
    claim, raised = deliverer.claim, []

    async def broken_once(limit: int) -> list[tuple[int, str]]:
        if not raised:
            raised.append(limit)
            raise AttributeError("'NoneType' object has no attribute 'send_packed_command'")
        return await claim(limit)

    monkeypatch.setattr(deliverer, "claim", broken_once)
    await stack.put_preferences("ada", **ADA)
    nid = await stack.send(user_id="ada", type="a", title="After the error", channels=["email"])
    await stack.states(nid, email="sent")
    assert raised
    assert len(emails_to(stack.smtp, "After the error")) == 1


async def test_a_send_outlasting_its_lease_is_renewed_while_claims_stall(
    redis_server: RedisServer,
    smtp: SmtpServer,
    push: PushEndpoint,
    twilio: TwilioApi,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A send longer than the lease (1 s here) keeps its job while this replica's claims hang
    (a master restarting, a slot migrating): the leases are renewed on their own, so the other
    replica never takes the job and the message goes out once."""
    phone = "+14155550131"
    twilio.answer_late(phone, 2.0)  # taken at once, answered after two leases
    release = asyncio.Event()
    async with notifier_stack(
        redis_server.url, smtp, push, twilio, notifier_claim_idle=1.0
    ) as stack:
        await stack.put_preferences("ada", **{**ADA, "contacts": {"phone": phone}})
        deliverer = stack.notifier.worker._deliverer
        claim, claimed = deliverer.claim, asyncio.Event()

        async def stalling(limit: int) -> list[tuple[int, str]]:
            if claimed.is_set():  # hangs until the test ends, then claims as before
                await release.wait()
            jobs = await claim(limit)
            if any(job.endswith("|sms") for _, job in jobs):
                claimed.set()
            return jobs

        monkeypatch.setattr(deliverer, "claim", stalling)
        nid = await stack.send(user_id="ada", type="a", title="Slow provider", channels=["sms"])
        await asyncio.wait_for(claimed.wait(), 10)
        try:
            async with notifier_stack(
                redis_server.url, smtp, push, twilio, notifier_claim_idle=1.0
            ) as other:
                status = await stack.states(nid, sms="sent")
                await asyncio.sleep(0.5)  # the other replica polls on: it finds nothing due
                sent_there = other.notifier.metrics.registry.get_sample_value(
                    "archmesh_notifier_deliveries_total", {"channel": "sms", "status": "sent"}
                )
        finally:
            release.set()
    assert status["sms"]["attempts"] == 1
    assert [m.body for m in twilio.messages if m.to == phone] == ["Slow provider"]
    assert sent_there is None


async def test_the_same_id_is_processed_once(stack: Stack) -> None:
    await stack.put_preferences("ada", **ADA)
    request = {
        "id": "order-42",
        "user_id": "ada",
        "type": "a",
        "title": "Once",
        "channels": ["email", "in_app"],
    }
    await stack.send(**request)
    await stack.states("order-42", email="sent")
    async with NotifierClient(stack.notifier.settings.redis_url) as client:
        await client.send(request)  # and again through the stream directly
        await client.send(request)
    # Wait until the stream is drained, then count what arrived.
    for _ in range(200):
        if _pending(stack) == 0:
            break
        await asyncio.sleep(0.02)
    assert _pending(stack) == 0
    assert len(emails_to(stack.smtp, "Once")) == 1
    inbox = (await stack.http.get("/api/users/ada/inbox")).json()
    assert [i["id"] for i in inbox["items"]].count("order-42") == 1


def _pending(stack: Stack) -> int:
    client = redis.Redis.from_url(stack.notifier.settings.redis_url)
    try:
        return int(client.xlen("nt:requests"))
    finally:
        client.close()


async def test_bad_stream_entries_go_to_dead_letters_and_the_worker_lives(stack: Stack) -> None:
    raw = redis.Redis.from_url(stack.notifier.settings.redis_url, decode_responses=True)
    try:
        raw.xadd("nt:requests", {"request": "{not json"})
        raw.xadd("nt:requests", {"request": '{"user_id": "ada", "type": "a"}'})
        raw.xadd("nt:requests", {"something": "else"})
        raw.xadd(
            "nt:requests",
            {"request": '{"user_id": "ada", "type": "a", "template": "no-such-template"}'},
        )
        for _ in range(300):
            if raw.xlen("nt:dead") >= 4:
                break
            await asyncio.sleep(0.02)
        dead = raw.xrange("nt:dead")
    finally:
        raw.close()
    reasons = [fields["reason"] for _, fields in dead]
    assert reasons[0].startswith("invalid request")
    assert "title" in reasons[1]
    assert reasons[2].startswith("invalid request")
    assert reasons[3] == "unknown template 'no-such-template'"
    nid = await stack.send(user_id="ada", type="a", title="still alive")
    await stack.states(nid, in_app="sent")


async def test_inbox_counts_and_mark_read(stack: Stack) -> None:
    ids = [await stack.send(user_id="cy", type="a", title=f"n{i}") for i in range(3)]
    for nid in ids:
        await stack.states(nid, in_app="sent")
    inbox = (await stack.http.get("/api/users/cy/inbox")).json()
    assert inbox["unread"] == 3
    assert [i["title"] for i in inbox["items"]] == ["n2", "n1", "n0"]
    reply = await stack.http.post(f"/api/users/cy/inbox/{ids[0]}/read")
    assert reply.json() == {"unseen": 2, "unread": 2}
    inbox = (await stack.http.get("/api/users/cy/inbox?limit=2")).json()
    assert len(inbox["items"]) == 2
    assert inbox["unread"] == 2
    missing = await stack.http.post("/api/users/cy/inbox/nope/read")
    assert missing.status_code == 404
    read_all = (await stack.http.post("/api/users/cy/inbox/read-all")).json()
    assert read_all == {"unseen": 0, "unread": 0, "unknown": []}
    inbox = (await stack.http.get("/api/users/cy/inbox")).json()
    assert inbox["unread"] == 0
    assert all(i["read"] for i in inbox["items"])


async def test_analytics_count_by_type_channel_and_status_per_hour(stack: Stack) -> None:
    await stack.put_preferences("ada", **ADA)
    stack.clock.set(datetime(2026, 3, 1, 9, 15, tzinfo=UTC))
    first = await stack.send(user_id="ada", type="alpha", title="a1", channels=["in_app", "email"])
    await stack.states(first, email="sent")
    stack.clock.set(datetime(2026, 3, 1, 11, 5, tzinfo=UTC))
    for n in range(2):
        nid = await stack.send(user_id="ada", type="beta", title=f"b{n}", channels=["in_app"])
        await stack.states(nid, in_app="sent")
    query = {"from": "2026-03-01T09:00:00Z", "to": "2026-03-01T12:00:00Z"}
    buckets = (await stack.http.get("/api/analytics", params=query)).json()["buckets"]
    counts = {(b["hour"][:13], b["type"], b["channel"], b["status"]): b["count"] for b in buckets}
    assert counts == {
        ("2026-03-01T09", "alpha", "in_app", "sent"): 1,
        ("2026-03-01T09", "alpha", "email", "sent"): 1,
        ("2026-03-01T11", "beta", "in_app", "sent"): 2,
    }
    only = {**query, "from": "2026-03-01T10:00:00Z", "channel": "in_app"}
    narrowed = (await stack.http.get("/api/analytics", params=only)).json()["buckets"]
    assert [(b["type"], b["count"]) for b in narrowed] == [("beta", 2)]
    bad = await stack.http.get("/api/analytics", params={"from": "2026-03-02", "to": "2026-03-01"})
    assert bad.status_code == 422


async def test_api_refuses_bad_input_with_json_errors(stack: Stack) -> None:
    cases = [
        ("POST", "/api/notifications", b"{", 400, "bad_json"),
        ("POST", "/api/notifications", b"[]", 422, "validation_error"),
        ("POST", "/api/notifications", b"x" * 300_000, 413, "too_large"),
        ("GET", "/api/notifications/no%20such", None, 422, "validation_error"),
        ("GET", "/api/notifications/nosuch", None, 404, "not_found"),
        ("PUT", "/api/templates/BAD", b"{}", 422, "validation_error"),
        ("GET", "/api/analytics?from=yesterday", None, 422, "validation_error"),
    ]
    for method, path, body, status, code in cases:
        reply = await stack.http.request(method, path, content=body)
        assert (reply.status_code, reply.json()["error"]["code"]) == (status, code), path
    anonymous = httpx.AsyncClient(transport=httpx.ASGITransport(app=stack.notifier.app))
    async with anonymous:
        reply = await anonymous.post("http://n/api/notifications", json={})
    assert reply.status_code == 401


async def test_workflow_events_become_notifications_for_the_session_owner(stack: Stack) -> None:
    reply = await stack.http.put("/api/sessions/s42", json={"owner_id": "dee"})
    assert reply.status_code == 200
    publisher = stack.notifier.publisher
    event = {"type": "workflow_update", "session_id": "s42", "stage": "design", "progress": 0.5}
    await publisher.publish("session:s42", {**event, "status": "running"})
    await publisher.publish("session:s42", {**event, "status": "review_required"})

    async def inbox() -> list[dict[str, Any]]:
        return list((await stack.http.get("/api/users/dee/inbox")).json()["items"])

    for _ in range(200):
        if items := await inbox():
            break
        await asyncio.sleep(0.05)
    assert [(i["type"], i["title"]) for i in items] == [
        ("workflow_review_required", "design: review required")
    ]
    status = await stack.status(items[0]["id"])
    assert status["priority"] == "high"
    await publisher.publish("session:s42", {**event, "status": "completed"})
    for _ in range(200):
        if len(await inbox()) == 2:
            break
        await asyncio.sleep(0.05)
    assert len(await inbox()) == 2
    unwatched = await stack.http.put("/api/sessions/s43", json={"owner": "x"})
    assert unwatched.status_code == 422


async def test_timestamps_follow_the_clock(stack: Stack) -> None:
    moment = datetime(2026, 5, 5, 5, 5, tzinfo=UTC)
    stack.clock.set(moment)
    nid = await stack.send(user_id="ada", type="a", title="when")
    await stack.states(nid, in_app="sent")
    created = datetime.fromisoformat((await stack.status(nid))["created_at"])
    assert moment <= created < moment + timedelta(seconds=5)
