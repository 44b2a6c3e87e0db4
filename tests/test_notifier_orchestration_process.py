"""Escalation steps and digest windows are durable scheduled jobs: real notifier processes,
one of them SIGKILLed mid-window, and the mail server counting what arrives."""

from __future__ import annotations

import asyncio
import collections
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from archmesh_client.notifier import NotifierClient

from tests.fakes.smtp import SmtpServer
from tests.fakes.twilio_api import TwilioApi
from tests.servers import NotifierProcess, RedisServer, until

pytestmark = pytest.mark.redis


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
def twilio() -> Iterator[TwilioApi]:
    with TwilioApi() as api:
        yield api


@pytest.fixture
def silent_mail_server() -> Iterator[int]:
    """A port that takes connections and never greets: a send to it hangs (until a timeout)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def mail_env(host: str, port: int) -> dict[str, str]:
    return {
        "ARCHMESH_SMTP_HOST": host,
        "ARCHMESH_SMTP_PORT": str(port),
        "ARCHMESH_SMTP_SECURITY": "none",
        "ARCHMESH_SMTP_TIMEOUT": "30",
        "ARCHMESH_EMAIL_FROM": "ArchMesh <notify@archmesh.test>",
        "ARCHMESH_NOTIFIER_CLAIM_IDLE": "1",
    }


async def test_an_escalation_step_survives_a_sigkill_of_the_replica_holding_it(
    redis_server: RedisServer,
    notifiers: list[NotifierProcess],
    smtp: SmtpServer,
    twilio: TwilioApi,
    silent_mail_server: int,
) -> None:
    rules = {
        "ARCHMESH_NOTIFIER_ESCALATION": "alert=in_app;email@unseen:1s;sms@unread:4s",
        "ARCHMESH_TWILIO_ACCOUNT_SID": twilio.account_sid,
        "ARCHMESH_TWILIO_AUTH_TOKEN": twilio.auth_token,
        "ARCHMESH_TWILIO_FROM": twilio.sender,
        "ARCHMESH_TWILIO_BASE_URL": twilio.base_url,
    }
    # The victim's mail server never answers: it is mid-send, holding the step, when killed.
    victim = NotifierProcess(
        redis_server.url, **rules, **mail_env("127.0.0.1", silent_mail_server)
    ).start()
    notifiers.append(victim)
    redis = redis_server.client()
    redis.set(
        "nt:prefs:eve",
        '{"contacts": {"email": "eve@example.com", "phone": "+14155550111"},'
        ' "channels": {"default": {"sms": true}}}',
    )
    body = {"user_id": "eve", "type": "alert", "title": "Disk full"}
    reply = await asyncio.to_thread(victim.request, "POST", "/api/notifications", json=body)
    nid = reply.json()["id"]
    job = f"{nid}|email"
    due = await until(lambda: redis.zscore("nt:due", job), 10, "the email step is scheduled")
    # Claimed: its score moved a lease past the time it was due.
    await until(lambda: (redis.zscore("nt:due", job) or 0) > due + 200, 10, "step claimed")
    victim.stop(signal.SIGKILL)
    assert b'"status":"waiting"' in redis.hget(f"nt:n:{nid}", "ch:email").replace(b" ", b"")

    survivor = NotifierProcess(redis_server.url, **rules, **mail_env(smtp.host, smtp.port))
    notifiers.append(survivor.start())
    await until(lambda: redis.zcard("nt:due") == 0 and twilio.messages, 20, "all steps done")
    status = await asyncio.to_thread(survivor.request, "GET", f"/api/notifications/{nid}")
    states = {m: d["status"] for m, d in status.json()["deliveries"].items()}
    assert states == {"in_app": "sent", "email": "sent", "sms": "sent"}
    assert [m.message["Subject"] for m in smtp.messages] == ["Disk full"]
    assert [m.to for m in twilio.messages] == ["+14155550111"]


async def test_a_thousand_users_ten_events_each_get_one_digest_each_across_a_sigkill(
    redis_server: RedisServer, notifiers: list[NotifierProcess], smtp: SmtpServer
) -> None:
    users, per_user = 1000, 10
    env = {**mail_env(smtp.host, smtp.port), "ARCHMESH_NOTIFIER_DIGESTS": "bulk=window:5s"}
    victim = NotifierProcess(redis_server.url, **env)
    survivor = NotifierProcess(redis_server.url, **env)
    await asyncio.gather(asyncio.to_thread(victim.start), asyncio.to_thread(survivor.start))
    notifiers += [victim, survivor]
    redis = redis_server.client()
    with redis.pipeline(transaction=False) as pipe:
        for n in range(users):
            pipe.set(f"nt:prefs:u{n}", f'{{"contacts": {{"email": "u{n}@example.com"}}}}')
        pipe.set(
            "nt:tpl:bulk",
            '{"channels": {"in_app": {"title": "{{ title }}"}, "email": {"subject":'
            ' "{{ count }} for {{ user_id }}", "text": "{% for e in events %}{{ e.title }} '
            '{% endfor %}"}}}',
        )
        pipe.execute()
    events = [
        {
            "id": f"b{u}-{k}",
            "user_id": f"u{u}",
            "type": "bulk",
            "template": "bulk",
            "title": f"e{k}",
        }
        for u in range(users)
        for k in range(per_user)
    ]

    def collected() -> int:
        return sum(
            int(redis.hget(k, "bulk|email|digested") or 0) for k in redis.scan_iter("nt:stats:*")
        )

    victim_id = victim.env["ARCHMESH_NODE_ID"]

    def holding() -> list[Any]:
        return list(redis.xpending_range("nt:requests", "notifiers", "-", "+", 1000, victim_id))

    async def produce() -> None:
        # Queued a tenth at a time (each a hundred users' ten events), not all at once: two
        # notifiers drain 10,000 in about a second, which a poll of this process (on the same
        # two cores) could miss whole. Paced closely enough that they never go idle between
        # tenths (idle, the victim holds nothing to be caught with).
        async with NotifierClient(redis_server.url) as client:
            for start in range(0, len(events), 1000):
                sent = await client.send_batch(events[start : start + 1000])
                assert sent.successful == 1000
                await asyncio.sleep(0.05)

    producer = asyncio.create_task(produce())
    # Killed while it holds a batch (read, locked, not yet recorded) and the windows fill:
    # both read just before the kill (read after it, the survivor may have done the rest).
    deadline, at_kill = time.monotonic() + 30, 0
    # `holding()` first: one XPENDING, where `collected()` scans every stats key.
    while not ((held := holding()) and (at_kill := collected()) >= 1000):
        assert at_kill < users * per_user, "every event was collected before the victim held any"
        assert time.monotonic() < deadline, "never caught the victim holding a batch"
        await asyncio.sleep(0.002)
    victim.stop(signal.SIGKILL)
    assert smtp.messages == [], "killed after a window closed, not mid-window"
    await producer

    await asyncio.to_thread(smtp.wait_for_messages, users, 60)
    settled = lambda: (  # noqa: E731
        redis.zcard("nt:due") == 0 and redis.xlen("nt:requests") == 0 and collected() == 10_000
    )
    await until(settled, 30, "every window closed and every digest request processed")
    # Settled: no job leased, nothing queued, so no send is on its way; count what arrived.
    subjects = collections.Counter(m.message["Subject"] for m in smtp.messages)
    expected, sent = users, len(smtp.messages)
    duplicates = sent - len(subjects)
    print(
        f"digests: expected {expected}, sent {sent}, duplicates {duplicates};"
        f" killed after {at_kill} events collected, holding {len(held)} requests"
    )
    assert set(subjects) == {f"{per_user} for u{u}" for u in range(users)}
    assert duplicates == 0
    for mail in smtp.messages[:50]:  # in the order the notifiers recorded them
        assert sorted(mail.message.get_content().split()) == [f"e{k}" for k in range(per_user)]
    assert sum(redis.zcard(f"nt:inbox:u{u}") for u in range(users)) == users * per_user
    assert redis.xlen("nt:dead") == 0
