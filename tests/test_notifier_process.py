"""Notifier processes as ops run them: live in-app delivery through a gateway, replicas sharing
the stream, a replica killed mid-batch, graceful SIGTERM, start-up errors."""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from archmesh_client.notifier import NotifierClient

from tests import wsclient
from tests.fakes.smtp import SmtpServer
from tests.servers import API_KEY, REPO, GatewayProcess, NotifierProcess, RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


async def test_in_app_notifications_reach_the_user_live_through_any_gateway(
    redis_server: RedisServer,
    gateways: list[GatewayProcess],
    notifiers: list[NotifierProcess],
) -> None:
    gateways.append(GatewayProcess(redis_server.url).start())
    notifiers.append(NotifierProcess(redis_server.url).start())
    notifier = notifiers[0]
    ws = await wsclient.connect(gateways[0].ws, "ada")
    await wsclient.subscribe(ws, "user:ada")
    body = {"user_id": "ada", "type": "workflow_review_required", "title": "Review", "body": "b"}
    reply = await asyncio.to_thread(notifier.request, "POST", "/api/notifications", json=body)
    assert reply.status_code == 202
    frame = await wsclient.recv_type(ws, "publication", timeout=10)
    event = frame["data"]
    assert frame["channel"] == "user:ada"
    assert (event["type"], event["notification_type"], event["title"]) == (
        "notification",
        "workflow_review_required",
        "Review",
    )
    assert event["id"] == reply.json()["id"]
    assert (event["unseen"], event["unread"]) == (1, 1)
    read = await asyncio.to_thread(
        notifier.request, "POST", f"/api/users/ada/inbox/{event['id']}/read"
    )
    assert read.json() == {"unseen": 0, "unread": 0}
    following = await wsclient.recv_type(ws, "publication", timeout=10)
    assert following["data"] == {"type": "inbox", "unseen": 0, "unread": 0}
    assert following["offset"] == frame["offset"] + 1  # published on the channel's history


async def test_a_replica_killed_mid_batch_loses_nothing_and_sends_nothing_twice(
    redis_server: RedisServer, notifiers: list[NotifierProcess], smtp: SmtpServer
) -> None:
    env = {
        "ARCHMESH_SMTP_HOST": smtp.host,
        "ARCHMESH_SMTP_PORT": str(smtp.port),
        "ARCHMESH_SMTP_SECURITY": "none",
        "ARCHMESH_EMAIL_FROM": "ArchMesh <notify@archmesh.test>",
        "ARCHMESH_NOTIFIER_CLAIM_IDLE": "1",
    }
    victim = NotifierProcess(redis_server.url, **env).start()
    notifiers.append(victim)
    redis = redis_server.client()
    prefs = '{"contacts": {"email": "u@example.com"}}'
    users = [f"u{n}" for n in range(20)]
    for user in users:
        redis.set(f"nt:prefs:{user}", prefs)
    total = 500
    async with NotifierClient(redis_server.url) as client:
        result = await client.send_batch(
            [
                {
                    "id": f"crash-{n}",
                    "user_id": users[n % len(users)],
                    "type": "workflow_completed",
                    "title": f"crash-{n}",
                    "channels": ["in_app", "email"],
                }
                for n in range(total)
            ]
        )
    assert result.successful == total
    # Kill the only replica once it has recorded part of the emails as sent. (Killing it the
    # instant the SMTP server has a message would aim at the one gap no sender can close: the
    # server accepted, the sender has not recorded it yet. A resend then is the documented
    # at-least-once edge; this test is about everything else.)
    deadline = time.monotonic() + 30
    while _emails_recorded(redis) < 40 and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    victim.stop(signal.SIGKILL)
    killed_at = len(smtp.messages)
    assert 0 < killed_at < total, killed_at
    notifiers.append(NotifierProcess(redis_server.url, **env).start())
    await asyncio.to_thread(smtp.wait_for_messages, total, 60)
    await asyncio.sleep(1.0)  # would-be duplicates would arrive now
    subjects = collections.Counter(m.message["Subject"] for m in smtp.messages)
    assert len(subjects) == total  # every notification's email arrived
    # At most the one message that was between the server's 250 and the victim's record when
    # it died is sent again (no sender can close that gap), and it is recognisably the same
    # message: same Message-ID, so mail stores keep one.
    resent = [subject for subject, n in subjects.items() if n > 1]
    assert len(resent) <= 1, subjects.most_common(3)
    assert max(subjects.values()) <= 2
    for subject in resent:
        ids = {m.message["Message-ID"] for m in smtp.messages if m.message["Subject"] == subject}
        assert ids == {f"<{subject}.email@archmesh.test>"}
    inbox_total = sum(redis.zcard(f"nt:inbox:{user}") for user in users)
    assert inbox_total == total
    assert redis.xlen("nt:dead") == 0


def _emails_recorded(redis: Any) -> int:
    field = "workflow_completed|email|sent"
    return sum(int(redis.hget(key, field) or 0) for key in redis.scan_iter("nt:stats:*"))


async def test_sigterm_stops_taking_requests_and_exits_cleanly(
    redis_server: RedisServer, notifiers: list[NotifierProcess]
) -> None:
    notifier = NotifierProcess(redis_server.url).start()
    notifiers.append(notifier)
    started = time.monotonic()
    # uvicorn re-raises the signal after a clean shutdown, as a signalled process should.
    assert notifier.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 10
    log = notifier.log.read_text()
    assert log.index("notifier_worker_stopped") < log.index("notifier_stopped")
    assert "Application shutdown complete" in log


def test_a_notifier_without_redis_refuses_to_start_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "archmesh_realtime", "notifier"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "ARCHMESH_REDIS_URL": ""},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("archmesh-rt: configuration error: ARCHMESH_REDIS_URL")
    assert "Traceback" not in result.stderr


async def test_a_burst_past_the_redis_pool_queues_instead_of_failing(
    redis_server: RedisServer, notifiers: list[NotifierProcess]
) -> None:
    """400 API calls at once against one notifier: more than its 100 pooled Redis connections
    are wanted at the same moment, and every call still answers 200 (none 500s on an empty
    pool)."""
    notifier = NotifierProcess(redis_server.url).start()
    notifiers.append(notifier)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=notifier.http, headers=headers, limits=limits) as http:
        replies = await asyncio.gather(
            *(http.get(f"/api/users/burst-{n % 50}/inbox", timeout=30) for n in range(400))
        )
    assert collections.Counter(reply.status_code for reply in replies) == {200: 400}
