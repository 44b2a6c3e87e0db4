"""Escalation, digests, throttles and cancellation on a real Redis, delivering to the real SMTP
server and Twilio stand-in, with a clock the test moves (a step ten minutes ahead comes due when
the clock is moved past it, not after ten minutes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from archmesh_client.notifier import NotifierClient

from notifier import keys
from notifier.rules import Rules
from tests.fakes.push_endpoint import PushEndpoint
from tests.fakes.smtp import SmtpServer
from tests.fakes.twilio_api import TwilioApi
from tests.notifier_stack import Stack, notifier_stack
from tests.servers import RedisServer

pytestmark = pytest.mark.redis

RULES = {
    "notifier_escalation": "review=in_app;email@unseen:10m;sms@unread:30m",
    "notifier_digests": (
        "comment=window:5m, like=window:5m;max:3;first:now, mention=window:2m;sliding:5m"
    ),
    "notifier_throttles": "ping=2/1h",
}
USER = {
    "contacts": {"email": "ada@example.com", "phone": "+14155550100"},
    "channels": {"default": {"in_app": True, "email": True, "push": False, "sms": True}},
}
DIGEST_TEMPLATE = {
    "channels": {
        "in_app": {"title": "{{ title }}"},
        "email": {
            "subject": "{{ count }} comments for {{ user_id }}",
            "text": "{% for e in events %}{{ e.title }}\n{% endfor %}",
        },
    }
}


@pytest.fixture
async def stack(
    redis_server: RedisServer, smtp: SmtpServer, push: PushEndpoint, twilio: TwilioApi
) -> AsyncIterator[Stack]:
    smtp.clear()
    async with notifier_stack(redis_server.url, smtp, push, twilio, **RULES) as s:
        yield s


def mails(smtp: SmtpServer, subject: str) -> list[Any]:
    return [m for m in smtp.messages if m.message["Subject"] == subject]


async def analytics(stack: Stack, kind: str) -> list[dict[str, Any]]:
    """The day around the stack's clock (which is not today)."""
    params = {"type": kind, "from": "2026-01-15T00:00:00Z", "to": "2026-01-16T00:00:00Z"}
    reply = await stack.http.get("/api/analytics", params=params)
    return list(reply.json()["buckets"])


def text_of(mail: Any) -> str:
    body = mail.message.get_body(preferencelist=("plain",))
    return str(body.get_content())


def sms_to(twilio: TwilioApi, text: str) -> list[Any]:
    return [m for m in twilio.messages if text in m.body]


async def test_escalation_stops_when_the_item_is_read(stack: Stack) -> None:
    await stack.put_preferences("ada", **USER)
    nid = await stack.send(user_id="ada", type="review", title="Review A")
    waiting = await stack.states(nid, in_app="sent", email="waiting", sms="waiting")
    assert "unless seen" in waiting["email"]["last_error"]
    read = await stack.http.post(f"/api/users/ada/inbox/{nid}/read")
    assert read.status_code == 200
    # Cancelled by the read itself, before any step comes due, and nothing is left to run.
    done = await stack.states(nid, in_app="sent", email="cancelled", sms="cancelled")
    assert done["email"]["last_error"] == "read in the app before this step"
    assert done["sms"]["last_error"] == "read in the app before this step"
    assert await stack.notifier.redis.zcard(keys.DUE) == 0
    stack.clock.advance(minutes=31)
    assert mails(stack.smtp, "Review A") == []
    assert sms_to(stack.twilio, "Review A") == []


async def test_read_all_cancels_the_waiting_steps_of_every_item_it_reads(stack: Stack) -> None:
    await stack.put_preferences("ada", **USER)
    first = await stack.send(user_id="ada", type="review", title="Review R1")
    second = await stack.send(user_id="ada", type="review", title="Review R2")
    for nid in (first, second):
        await stack.states(nid, email="waiting", sms="waiting")
    assert (await stack.http.post("/api/users/ada/inbox/read-all")).status_code == 200
    for nid in (first, second):
        await stack.states(nid, email="cancelled", sms="cancelled")
    assert await stack.notifier.redis.zcard(keys.DUE) == 0


async def test_escalation_goes_on_to_email_then_sms_while_unread(stack: Stack) -> None:
    await stack.put_preferences("ada", **USER)
    nid = await stack.send(user_id="ada", type="review", title="Review B")
    await stack.states(nid, email="waiting", sms="waiting")
    stack.clock.advance(minutes=11)
    await stack.states(nid, email="sent", sms="waiting")
    assert len(mails(stack.smtp, "Review B")) == 1
    assert sms_to(stack.twilio, "Review B") == []
    stack.clock.advance(minutes=20)
    await stack.states(nid, email="sent", sms="sent")
    assert len(sms_to(stack.twilio, "Review B")) == 1


async def test_a_seen_item_skips_the_unseen_step_but_not_the_unread_one(stack: Stack) -> None:
    await stack.put_preferences("ada", **USER)
    nid = await stack.send(
        user_id="ada",
        type="other",
        title="Review C",
        escalation="in_app;email@unseen:1m;sms@unread:2m",
    )
    await stack.states(nid, email="waiting", sms="waiting")
    seen = await stack.http.post(f"/api/users/ada/inbox/{nid}/seen")  # seen, not read
    assert seen.json() == {"unseen": 0, "unread": 1}
    stack.clock.advance(minutes=3)
    status = await stack.states(nid, email="cancelled", sms="sent")
    assert status["email"]["last_error"] == "seen in the app before this step"
    assert mails(stack.smtp, "Review C") == []


async def test_steps_respect_quiet_hours_and_preferences_when_they_come_due(stack: Stack) -> None:
    # 12:00 UTC now; quiet from 12:05 to 13:00 in the user's zone: the step due at 12:10 waits.
    quiet = {**USER, "quiet_hours": {"start": "12:05", "end": "13:00"}}
    await stack.put_preferences("ada", **quiet)
    nid = await stack.send(
        user_id="ada", type="other", title="Review D", escalation="in_app;email@unseen:10m"
    )
    later = await stack.send(
        user_id="ada", type="other", title="Review E", escalation="in_app;email@unseen:10m"
    )
    await stack.states(nid, email="waiting")
    await stack.states(later, email="waiting")
    stack.clock.advance(minutes=11)
    held = await stack.states(nid, email="held")
    assert held["email"]["next_attempt_at"].startswith("2026-01-15T13:00")
    await stack.states(later, email="held")
    # Switched off meanwhile: the held step is checked again when the quiet hours end.
    off = {
        **quiet,
        "channels": {"default": {"in_app": True, "email": True}, "other": {"email": False}},
    }
    await stack.put_preferences("ada", **off)
    stack.clock.advance(minutes=50)
    await stack.states(nid, email="suppressed")
    await stack.states(later, email="suppressed")
    assert mails(stack.smtp, "Review D") == []


async def test_a_digest_of_ten_events_is_one_email_with_count_ten(stack: Stack) -> None:
    await stack.put_preferences("ada", **USER)
    assert (await stack.http.put("/api/templates/comment", json=DIGEST_TEMPLATE)).is_success
    body = {
        "notifications": [
            {
                "id": f"c{n}",
                "user_id": "ada",
                "type": "comment",
                "template": "comment",
                "title": f"comment {n}",
            }
            for n in range(10)
        ]
    }
    assert (await stack.http.post("/api/notifications/batch", json=body)).json()["successful"] == 10
    for n in range(10):
        status = await stack.states(f"c{n}", in_app="sent", email="digested")
        assert "sms" not in status or status["sms"]["status"] == "digested"
    inbox = (await stack.http.get("/api/users/ada/inbox")).json()
    assert sorted(i["id"] for i in inbox["items"]) == sorted(f"c{n}" for n in range(10))
    assert mails(stack.smtp, "10 comments for ada") == []
    stack.clock.advance(minutes=6)
    [mail] = await _wait_mails(stack.smtp, "10 comments for ada")
    text = mail.message.get_content()
    assert [line for line in text.splitlines() if line] == [f"comment {n}" for n in range(10)]
    digest_id = mail.message["Message-ID"].strip("<>").split(".email@")[0]
    await stack.states(digest_id, email="sent")
    assert len(mails(stack.smtp, "10 comments for ada")) == 1  # its job is done: no second
    assert await stack.notifier.redis.zcard(keys.DUE) == 0


async def test_first_at_once_and_max_events_close_the_window_early(stack: Stack) -> None:
    await stack.put_preferences("ada", **{**USER, "channels": {"default": {"sms": False}}})
    first = await stack.send(user_id="ada", type="like", title="like 0")
    await stack.states(first, email="sent")
    for n in range(1, 4):
        await stack.send(id=f"like{n}", user_id="ada", type="like", title=f"like {n}")
    # The third collected event fills the window: it closes now, not in 5 minutes.
    [mail] = await _wait_mails(stack.smtp, "like 1 and 2 more")
    assert "like 3" in text_of(mail)
    assert len(mails(stack.smtp, "like 0")) == 1


async def test_a_sliding_window_moves_with_each_event_up_to_its_maximum(stack: Stack) -> None:
    await stack.put_preferences("ada", **USER)
    redis = stack.notifier.redis
    for n, minutes in enumerate([0.0, 1.5, 1.5]):  # events at 0, 1.5 and 3 minutes
        stack.clock.advance(minutes=minutes)
        await stack.states(
            await stack.send(user_id="ada", type="mention", title=f"m{n}"), email="digested"
        )
        digest_id = await redis.get(keys.digest_open("ada|mention|"))
        window, _, _ = keys.digest(digest_id)
        opened, closes = map(int, await redis.hmget(window, ["opened", "closes"]))
        score = await redis.zscore(keys.DUE, f"{keys.DIGEST_JOB}{digest_id}")
        assert score == closes
        # 2 minutes after the event, but never past 5 minutes after the window opened.
        expected = [opened + 120_000, opened + 210_000, opened + 300_000][n]
        assert abs(closes - expected) < 1000
    stack.clock.advance(minutes=2.5)
    [mail] = await _wait_mails(stack.smtp, "m0 and 2 more")
    assert text_of(mail).split() == ["m0", "m1", "m2"]


async def test_a_throttle_suppresses_past_its_limit(stack: Stack) -> None:
    await stack.put_preferences("ada", **USER)
    ids = [await stack.send(user_id="ada", type="ping", title=f"ping {n}") for n in range(4)]
    for nid in ids[:2]:
        await stack.states(nid, in_app="sent", email="sent")
    for nid in ids[2:]:
        status = await stack.states(nid, in_app="suppressed", email="suppressed")
        assert status["in_app"]["last_error"] == "throttled"
    inbox = (await stack.http.get("/api/users/ada/inbox")).json()
    assert {i["id"] for i in inbox["items"]} == set(ids[:2])
    stats = await analytics(stack, "ping")
    throttled = [b for b in stats if b.get("reason") == "throttled"]
    assert {(b["channel"], b["count"]) for b in throttled} >= {("in_app", 2), ("email", 2)}
    stack.clock.advance(hours=1, minutes=1)  # a sliding hour later the limit has room again
    nid = await stack.send(user_id="ada", type="ping", title="ping later")
    await stack.states(nid, in_app="sent", email="sent")


async def test_cancel_key_cancels_held_escalating_and_digesting_steps(
    stack: Stack, redis_server: RedisServer
) -> None:
    await stack.put_preferences("ada", **USER)
    await stack.put_preferences(
        "bob", **{**USER, "quiet_hours": {"start": "11:00", "end": "13:00"}}
    )
    order = {"cancel_key": "order-7", "title": "Order 7"}
    held = await stack.send(user_id="bob", type="other", channels=["email"], **order)
    escalating = await stack.send(user_id="ada", type="review", **order)
    digesting = await stack.send(user_id="ada", type="comment", **order)
    kept = await stack.send(user_id="ada", type="comment", title="Other comment")
    await stack.states(held, email="held")
    await stack.states(escalating, email="waiting", sms="waiting")
    await stack.states(digesting, email="digested")
    await stack.states(kept, email="digested")

    reply = await stack.http.post("/api/notifications/cancel", json={"cancel_key": "order-7"})
    assert reply.json() == {"cancel_key": "order-7", "cancelled": 5, "notifications": 3}
    assert (await stack.status(held))["deliveries"]["email"]["status"] == "cancelled"
    await stack.states(escalating, in_app="sent", email="cancelled", sms="cancelled")
    await stack.states(digesting, in_app="sent", email="cancelled", sms="cancelled")
    timeline = (await stack.http.get(f"/api/ops/notifications/{escalating}/timeline")).json()
    steps = [(e["medium"], e["status"]) for e in timeline["events"]]
    assert steps[-2:] == [("email", "cancelled"), ("sms", "cancelled")]  # the timeline has it
    again = await stack.http.post("/api/notifications/cancel", json={"cancel_key": "order-7"})
    assert again.json()["cancelled"] == 0
    bad = await stack.http.post("/api/notifications/cancel", json={"cancel_key": "no spaces"})
    assert (bad.status_code, bad.json()["error"]["code"]) == (422, "validation_error")

    stack.clock.advance(hours=2)  # past the quiet hours, the steps and the digest window
    [mail] = await _wait_mails(stack.smtp, "Other comment")  # the digest has only the other one
    assert "Order 7" not in text_of(mail)
    assert mails(stack.smtp, "Order 7") == []
    stats = await analytics(stack, "review")
    assert {(b["channel"], b["status"]) for b in stats} >= {("email", "cancelled")}

    # The Python client cancels the same way.
    later = await stack.send(user_id="ada", type="review", title="Later", cancel_key="k2")
    await stack.states(later, email="waiting")
    async with NotifierClient(redis_server.url) as client:
        result = await client.cancel("k2")
    assert (result.cancelled, result.notifications) == (2, 1)
    await stack.states(later, email="cancelled", sms="cancelled")


async def test_erasure_removes_open_steps_digest_windows_and_throttle_logs(
    stack: Stack, redis_server: RedisServer
) -> None:
    await stack.put_preferences("zoe", **{**USER, "contacts": {"email": "zoe@example.com"}})
    steps = await stack.send(user_id="zoe", type="review", title="Z1")
    digested = await stack.send(user_id="zoe", type="comment", title="Z2")
    throttled = await stack.send(user_id="zoe", type="ping", title="Z3")
    await stack.states(steps, email="waiting")
    await stack.states(digested, email="digested")
    await stack.states(throttled, email="sent")
    client = redis_server.client()
    assert any(b"zoe" in key for key in client.scan_iter())
    assert (await stack.http.delete("/api/users/zoe")).status_code == 204
    left = [key for key in client.scan_iter() if b"zoe" in key]
    assert left == []
    for key in client.scan_iter():
        if client.type(key) == b"hash":
            assert not any(b"zoe" in v for v in client.hgetall(key).values()), key
    assert client.zrange("nt:due", 0, -1) == []
    status = await stack.status(steps)
    assert status["deliveries"]["email"]["status"] == "cancelled"
    stack.clock.advance(minutes=40)  # past the steps and the window: nothing goes out
    await stack.states(steps, email="cancelled")
    assert mails(stack.smtp, "Z2") == mails(stack.smtp, "Z1") == []


async def test_requests_and_settings_with_bad_rules_are_refused(stack: Stack) -> None:
    for steps in [
        "email@unseen:1m",
        "in_app;email@seen:1m",
        "in_app;email@unseen:5m;sms@unread:1m",
        "in_app;in_app",
        "in_app;fax@unseen:1m",
        "in_app;email@unseen:soon",
    ]:
        reply = await stack.http.post(
            "/api/notifications",
            json={"user_id": "ada", "type": "x", "title": "t", "escalation": steps},
        )
        assert (reply.status_code, reply.json()["error"]["code"]) == (422, "validation_error"), (
            steps
        )
    both_at_once = Rules.parse(escalation="review=in_app;email, other=in_app;sms@unread:1h")
    assert [s.medium for s in both_at_once.escalation["review"]] == ["in_app", "email"]
    for bad in [
        {"digests": "comment=max:3"},
        {"digests": "comment=window:10m;sliding:1m"},
        {"throttles": "ping=0/1h"},
        {"escalation": "review=in_app", "digests": "review=window:1m"},
        {"escalation": "Not A Type=in_app"},
    ]:
        with pytest.raises(ValueError, match=r"ARCHMESH_NOTIFIER|not both"):
            Rules.parse(**bad)


async def _wait_mails(smtp: SmtpServer, subject: str, count: int = 1) -> list[Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = mails(smtp, subject)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no email {subject!r}; got {[m.message['Subject'] for m in smtp.messages]}")
