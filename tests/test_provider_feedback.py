"""What providers say after accepting a message reaches the delivery status: the signed email
events webhook (bounces, complaints, receipts) and Twilio's signed status callbacks.

Email: the in-process notifier on a real Redis sends to the aiosmtpd peer; the events quote
the `X-ArchMesh-Notification` (or Message-ID) header the peer received. SMS: a notifier process
as ops run it sends to the Twilio peer with a `StatusCallback`; the peer signs its callbacks as
Twilio does and posts them to that URL (through its ingress stand-in)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from notifier.feedback import address_hash
from notifier.senders.sms import STATUS_CALLBACK_PATH
from tests.fakes.push_endpoint import PushEndpoint
from tests.fakes.smtp import ReceivedEmail, SmtpServer
from tests.fakes.twilio_api import ReceivedSms, TwilioApi
from tests.notifier_stack import Stack, notifier_stack
from tests.servers import NotifierProcess, RedisServer, wait_until

pytestmark = pytest.mark.redis

SECRET = b"s" * 40
EVENTS = "/api/providers/email/events"
PUBLIC_URL = "https://notify.archmesh.test"
HOUR = {"from": "2026-01-15T11:00:00Z", "to": "2026-01-15T14:00:00Z"}


@pytest.fixture
async def stack(
    redis_server: RedisServer, smtp: SmtpServer, push: PushEndpoint, twilio: TwilioApi
) -> AsyncIterator[Stack]:
    smtp.clear()
    settings = {"notifier_email_events_secret": SECRET.decode()}
    async with notifier_stack(redis_server.url, smtp, push, twilio, **settings) as s:
        yield s


def signed(body: bytes, *, secret: bytes = SECRET, at: float | None = None) -> dict[str, str]:
    """The headers of a request signed as the docs tell a provider's adapter to sign it."""
    stamp = int(time.time() if at is None else at)
    digest = hmac.new(secret, f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {"X-ArchMesh-Signature": f"t={stamp},v1={digest}", "Content-Type": "application/json"}


def event(kind: str, email: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"ev-{time.monotonic_ns()}",
        "type": kind,
        "email": email,
        "timestamp": "2026-01-15T12:00:05Z",
        **fields,
    }


async def post_events(
    stack: Stack, *events: dict[str, Any], at: float | None = None
) -> httpx.Response:
    body = json.dumps({"events": list(events)}).encode()
    return await stack.http.post(EVENTS, content=body, headers=signed(body, at=at))


async def emailed(stack: Stack, user: str, address: str, kind: str = "build_done") -> str:
    """Send one email-only notification and wait until the SMTP peer has it."""
    before = len(stack.smtp.messages)
    nid = await stack.send(user_id=user, type=kind, title=f"to {address}", channels=["email"])
    await stack.states(nid, email="sent")
    [*_, received] = stack.smtp.wait_for_messages(before + 1)
    assert received.rcpt_tos == (address,)
    return nid


def last_mail(stack: Stack) -> ReceivedEmail:
    return stack.smtp.messages[-1]


async def counts(stack: Stack, status: str) -> int:
    reply = await stack.http.get("/api/analytics", params=HOUR)
    assert reply.status_code == 200, reply.text
    return sum(b["count"] for b in reply.json()["buckets"] if b["status"] == status)


# -- email events ----------------------------------------------------------------------------


async def test_a_hard_bounce_marks_the_delivery_bounced_and_suppresses_the_address_until_it_changes(
    stack: Stack,
) -> None:
    await stack.put_preferences("ada", contacts={"email": "ada@bounce.test"})
    first = await emailed(stack, "ada", "ada@bounce.test")
    header = last_mail(stack).message["X-ArchMesh-Notification"]
    assert header == first
    bounce = event(
        "bounce",
        "ada@bounce.test",
        bounce_type="hard",
        notification_id=header,
        provider_message_id="0100018c-abc",
        reason="550 5.1.1 <ada@bounce.test>: no such mailbox",
    )
    reply = await post_events(stack, bounce)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"results": [{"id": bounce["id"], "outcome": "recorded"}]}
    email = (await stack.status(first))["deliveries"]["email"]
    assert (email["status"], email["provider_status"]) == ("bounced", "hard_bounce")
    assert email["last_error"] == "hard bounce: 550 5.1.1 <***>: no such mailbox"
    assert await counts(stack, "bounced") == 1
    # The list holds the address's hash, not the address.
    redis = stack.notifier.redis
    assert await redis.exists(f"nt:suppressed:email:{address_hash('ADA@bounce.test')}")
    assert [k async for k in redis.scan_iter("*bounce.test*")] == []

    mailed = len(stack.smtp.messages)
    second = await stack.send(user_id="ada", type="build_done", title="again", channels=["email"])
    email = (await stack.states(second, email="suppressed"))["email"]
    assert email["last_error"] == (
        "address suppressed since 2026-01-15T12:00:05+00:00: "
        "hard bounce: 550 5.1.1 <***>: no such mailbox"
    )
    assert len(stack.smtp.messages) == mailed

    # The provider sends the same event again (a retry, freshly signed): applied once.
    again = await post_events(stack, bounce, at=time.time() + 5)
    assert again.json()["results"][0]["outcome"] == "duplicate"
    assert await counts(stack, "bounced") == 1

    await stack.put_preferences("ada", contacts={"email": "ada@new.test"})
    await emailed(stack, "ada", "ada@new.test")

    # A hard bounce for an email whose status is gone still suppresses its address.
    orphan = event("bounce", "old@bounce.test", bounce_type="hard", notification_id="expired")
    assert (await post_events(stack, orphan)).json()["results"][0]["outcome"] == "unmatched"
    assert await redis.exists(f"nt:suppressed:email:{address_hash('old@bounce.test')}")


async def test_a_soft_bounce_is_noted_without_suppressing_and_a_late_one_never_undoes_delivered(
    stack: Stack,
) -> None:
    await stack.put_preferences("bob", contacts={"email": "bob@soft.test"})
    nid = await emailed(stack, "bob", "bob@soft.test")
    message_id = last_mail(stack).message["Message-ID"]  # the other way back to the delivery
    soft = event(
        "bounce", "bob@soft.test", bounce_type="soft", message_id=message_id, reason="452 full"
    )
    assert (await post_events(stack, soft)).json()["results"][0]["outcome"] == "recorded"
    email = (await stack.status(nid))["deliveries"]["email"]
    assert (email["status"], email["provider_status"]) == ("sent", "soft_bounce")
    assert email["last_error"] == "soft bounce: 452 full"

    delivered = event("delivery", "bob@soft.test", message_id=message_id)
    late_soft = {**soft, "id": "ev-late-soft"}
    reply = await post_events(stack, delivered, late_soft)
    outcomes = [r["outcome"] for r in reply.json()["results"]]
    assert outcomes == ["recorded", "unchanged"]
    email = (await stack.status(nid))["deliveries"]["email"]
    assert (email["status"], email["provider_status"], email["last_error"]) == (
        "delivered",
        "delivered",
        None,
    )
    assert await counts(stack, "delivered") == 1
    await emailed(stack, "bob", "bob@soft.test")  # not suppressed


async def test_a_complaint_switches_that_types_email_off_for_that_user(stack: Stack) -> None:
    await stack.put_preferences("cy", contacts={"email": "cy@complains.test"})
    nid = await emailed(stack, "cy", "cy@complains.test", kind="weekly_digest")
    complaint = event("complaint", "cy@complains.test", notification_id=nid)
    assert (await post_events(stack, complaint)).json()["results"][0]["outcome"] == "recorded"
    prefs = (await stack.http.get("/api/users/cy/preferences")).json()
    assert prefs["channels"]["weekly_digest"] == {"email": False}
    email = (await stack.status(nid))["deliveries"]["email"]
    assert (email["status"], email["provider_status"]) == ("sent", "complaint")
    assert email["last_error"] == "complaint: this type's email is now off for the user"

    later = await stack.send(user_id="cy", type="weekly_digest", title="t", channels=["email"])
    suppressed = (await stack.states(later, email="suppressed"))["email"]
    assert suppressed["last_error"] == "disabled in the user's preferences"
    await emailed(stack, "cy", "cy@complains.test", kind="build_done")  # other types still go


async def test_unsigned_forged_stale_replayed_and_malformed_requests_are_refused(
    stack: Stack,
) -> None:
    await stack.put_preferences("dee", contacts={"email": "dee@x.test"})
    nid = await emailed(stack, "dee", "dee@x.test")
    bounce = event("bounce", "dee@x.test", bounce_type="hard", notification_id=nid)
    body = json.dumps([bounce]).encode()  # a bare list of events is taken too

    async def post(payload: bytes, headers: dict[str, str]) -> tuple[int, str]:
        reply = await stack.http.post(EVENTS, content=payload, headers=headers)
        return reply.status_code, reply.json()["error"]["code"]

    assert await post(body, {"Content-Type": "application/json"}) == (401, "invalid_signature")
    assert await post(body, signed(body, secret=b"f" * 40)) == (401, "invalid_signature")
    assert await post(body + b" ", signed(body)) == (401, "invalid_signature")  # body altered
    assert await post(body, signed(body, at=time.time() - 301)) == (400, "stale_signature")
    assert await post(b"{not json", signed(b"{not json")) == (400, "bad_json")
    no_kind = json.dumps([{**bounce, "bounce_type": None}]).encode()
    assert await post(no_kind, signed(no_kind)) == (422, "validation_error")
    email = (await stack.status(nid))["deliveries"]["email"]
    assert email["status"] == "sent"  # none of those changed anything

    headers = signed(body)
    first = await stack.http.post(EVENTS, content=body, headers=headers)
    assert first.json()["results"][0]["outcome"] == "recorded"
    assert await post(body, headers) == (409, "replayed")
    assert await counts(stack, "bounced") == 1
    assert await post(b"{" * (512 * 1024 + 1), signed(b"{")) == (413, "too_large")

    def refused(reason: str) -> float | None:
        return stack.notifier.metrics.registry.get_sample_value(
            "archmesh_notifier_webhooks_refused_total", {"provider": "email", "reason": reason}
        )

    assert {r: refused(r) for r in ("signature", "stale", "replayed", "malformed")} == {
        "signature": 3,
        "stale": 1,
        "replayed": 1,
        "malformed": 3,
    }


# -- Twilio status callbacks -----------------------------------------------------------------


@pytest.fixture(scope="module")
def sms_notifier(twilio: TwilioApi) -> Iterator[NotifierProcess]:
    redis = RedisServer()
    redis.start()
    notifier = NotifierProcess(
        redis.url,
        ARCHMESH_TWILIO_ACCOUNT_SID=twilio.account_sid,
        ARCHMESH_TWILIO_AUTH_TOKEN=twilio.auth_token,
        ARCHMESH_TWILIO_FROM=twilio.sender,
        ARCHMESH_TWILIO_BASE_URL=twilio.base_url,
        ARCHMESH_NOTIFIER_PUBLIC_URL=PUBLIC_URL,
    )
    try:
        notifier.start()
        twilio.callbacks_via(notifier.http)  # stands in for the ingress at PUBLIC_URL
        yield notifier
    finally:
        notifier.stop()
        redis.cleanup()


def texted(notifier: NotifierProcess, twilio: TwilioApi, phone: str) -> tuple[str, ReceivedSms]:
    prefs = {"contacts": {"phone": phone}, "channels": {"default": {"sms": True}}}
    user = f"u{phone[-4:]}"
    assert notifier.request("PUT", f"/api/users/{user}/preferences", json=prefs).status_code == 200
    body = {"user_id": user, "type": "build_done", "title": "Built", "channels": ["sms"]}
    nid = notifier.request("POST", "/api/notifications", json=body).json()["id"]
    wait_until(
        lambda: sms_state(notifier, nid).get("status") == "sent", timeout=10, what="sms sent"
    )
    [sms] = [m for m in twilio.messages if m.to == phone]
    return nid, sms


def sms_state(notifier: NotifierProcess, nid: str) -> dict[str, Any]:
    reply = notifier.request("GET", f"/api/notifications/{nid}")
    return dict(reply.json()["deliveries"]["sms"]) if reply.status_code == 200 else {}


def outcome(reply: httpx.Response) -> str:
    assert reply.status_code == 200, reply.text
    return str(reply.json()["outcome"])


def test_a_signed_delivered_callback_is_recorded_and_a_late_sent_never_moves_it_back(
    sms_notifier: NotifierProcess, twilio: TwilioApi
) -> None:
    nid, sms = texted(sms_notifier, twilio, "+15005550101")
    assert sms.status_callback == PUBLIC_URL + STATUS_CALLBACK_PATH
    assert outcome(twilio.report(sms, "sent")) == "unchanged"  # not final: nothing to record
    assert outcome(twilio.report(sms, "delivered")) == "recorded"
    assert sms_state(sms_notifier, nid)["status"] == "delivered"
    assert outcome(twilio.report(sms, "sent")) == "unchanged"  # out of order
    assert outcome(twilio.report(sms, "delivered")) == "duplicate"  # sent twice
    state = sms_state(sms_notifier, nid)
    assert (state["status"], state["provider_status"]) == ("delivered", "delivered")
    now = datetime.now(UTC)
    window = {
        "from": now.replace(minute=0, second=0, microsecond=0).isoformat(),
        "to": now.isoformat(),
    }
    report = sms_notifier.request("GET", "/api/analytics", params=window).json()
    sms_counts = {b["status"]: b["count"] for b in report["buckets"] if b["channel"] == "sms"}
    assert sms_counts.get("delivered") == 1


def test_an_undelivered_callback_records_failed_with_twilios_error_code(
    sms_notifier: NotifierProcess, twilio: TwilioApi
) -> None:
    nid, sms = texted(sms_notifier, twilio, "+15005550102")
    assert outcome(twilio.report(sms, "undelivered", error_code=30003)) == "recorded"
    state = sms_state(sms_notifier, nid)
    assert (state["status"], state["provider_status"], state["provider_code"]) == (
        "failed",
        "undelivered",
        "30003",
    )
    assert state["last_error"] == "Twilio: undelivered (error 30003)"
    assert outcome(twilio.report(sms, "delivered")) == "unchanged"  # a final word stays
    assert sms_state(sms_notifier, nid)["status"] == "failed"


def test_a_forged_callback_is_refused_and_changes_nothing(
    sms_notifier: NotifierProcess, twilio: TwilioApi
) -> None:
    nid, sms = texted(sms_notifier, twilio, "+15005550103")
    before = refused_callbacks(sms_notifier)
    forged = twilio.report(sms, "failed", error_code=30008, token="0" * 32)
    assert forged.status_code == 403
    assert forged.json()["error"]["code"] == "invalid_signature"
    # Signed for the URL the request arrived at, not the public one Twilio was given.
    inside = dataclasses.replace(sms, status_callback=sms_notifier.http + STATUS_CALLBACK_PATH)
    assert twilio.report(inside, "failed").status_code == 403
    assert sms_state(sms_notifier, nid)["status"] == "sent"
    assert outcome(twilio.report(sms, "delivered")) == "recorded"  # the real one still counts
    assert refused_callbacks(sms_notifier) == before + 2


def refused_callbacks(notifier: NotifierProcess) -> float:
    """`archmesh_notifier_webhooks_refused_total{provider="twilio",reason="signature"}`."""
    name = 'archmesh_notifier_webhooks_refused_total{provider="twilio",reason="signature"}'
    for line in httpx.get(f"{notifier.http}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} is not in the scrape")


def test_a_callback_that_comes_before_twilios_answer_is_held_and_applied_with_the_sid(
    sms_notifier: NotifierProcess, twilio: TwilioApi
) -> None:
    """Twilio takes the message and calls back `delivered` before its answer to the send
    (which carries the sid) reaches the notifier: the callback is held, not lost, and the
    delivery ends `delivered` once the answer comes."""
    phone = "+15005550104"
    twilio.answer_late(phone, 1.5)
    prefs = {"contacts": {"phone": phone}, "channels": {"default": {"sms": True}}}
    reply = sms_notifier.request("PUT", "/api/users/late/preferences", json=prefs)
    assert reply.status_code == 200
    body = {"user_id": "late", "type": "build_done", "title": "Built", "channels": ["sms"]}
    nid = sms_notifier.request("POST", "/api/notifications", json=body).json()["id"]
    wait_until(lambda: any(m.to == phone for m in twilio.messages), timeout=10, what="taken")
    [sms] = [m for m in twilio.messages if m.to == phone]
    assert outcome(twilio.report(sms, "delivered")) == "held"  # the answer is still on its way
    assert outcome(twilio.report(sms, "delivered")) == "held"  # Twilio retrying it
    wait_until(
        lambda: sms_state(sms_notifier, nid).get("status") == "delivered",
        timeout=10,
        what="the held callback applied",
    )
    state = sms_state(sms_notifier, nid)
    assert (state["provider_status"], state["attempts"]) == ("delivered", 1)
    assert outcome(twilio.report(sms, "delivered")) == "duplicate"
    assert len([m for m in twilio.messages if m.to == phone]) == 1


async def test_the_same_callback_sent_twice_at_once_is_applied_once(
    sms_notifier: NotifierProcess, twilio: TwilioApi
) -> None:
    nids_and_sms = [
        await asyncio.to_thread(texted, sms_notifier, twilio, f"+1500555020{i}") for i in range(3)
    ]
    replies = await asyncio.gather(
        *(
            asyncio.to_thread(twilio.report, sms, "delivered")
            for _, sms in nids_and_sms
            for _ in range(2)
        )
    )
    assert sorted(outcome(r) for r in replies) == ["duplicate"] * 3 + ["recorded"] * 3
