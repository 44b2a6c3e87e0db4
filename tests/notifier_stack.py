"""An in-process notifier on a real Redis, delivering to the real local peers, with a clock
the test can move: real time plus an offset, so retries still come due by themselves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from notifier.app import Notifier
from notifier.deliveries import Senders
from notifier.senders.email import EmailSender
from notifier.senders.push import PushSender
from notifier.senders.sms import SmsSender
from notifier.settings import NotifierSettings
from tests.fakes.push_endpoint import PushEndpoint
from tests.fakes.smtp import SmtpServer
from tests.fakes.tls import loopback_certificates
from tests.fakes.twilio_api import TwilioApi
from tests.servers import API_KEY, JWT_SECRET

VAPID_KEY = ec.generate_private_key(ec.SECP256R1())


class MovableClock:
    """`datetime.now` from a chosen start that runs at real speed; `advance` jumps ahead."""

    def __init__(self, start: datetime) -> None:
        self._start = start
        self._t0 = time.monotonic()

    def __call__(self) -> datetime:
        return self._start + timedelta(seconds=time.monotonic() - self._t0)

    def advance(self, **delta: float) -> None:
        self._start += timedelta(**delta)

    def set(self, moment: datetime) -> None:
        self._start, self._t0 = moment, time.monotonic()


@dataclass
class Stack:
    notifier: Notifier
    http: httpx.AsyncClient
    clock: MovableClock
    smtp: SmtpServer
    push: PushEndpoint
    twilio: TwilioApi

    async def send(self, **request: Any) -> str:
        reply = await self.http.post("/api/notifications", json=request)
        assert reply.status_code == 202, reply.text
        return str(reply.json()["id"])

    async def status(self, notification_id: str) -> dict[str, Any]:
        reply = await self.http.get(f"/api/notifications/{notification_id}")
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    async def wait_status(
        self,
        notification_id: str,
        done: Callable[[dict[str, Any]], bool],
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Poll the status API until `done(deliveries)` holds."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            reply = await self.http.get(f"/api/notifications/{notification_id}")
            if reply.status_code == 200:
                last = reply.json()["deliveries"]
                if done(last):
                    return last
            await asyncio.sleep(0.02)
        raise TimeoutError(f"status of {notification_id} never matched; last: {last}")

    async def states(self, notification_id: str, **expected: str) -> dict[str, Any]:
        def match(deliveries: dict[str, Any]) -> bool:
            return all(deliveries.get(c, {}).get("status") == s for c, s in expected.items())

        return await self.wait_status(notification_id, match)

    async def put_preferences(self, user_id: str, **prefs: Any) -> None:
        reply = await self.http.put(f"/api/users/{user_id}/preferences", json=prefs)
        assert reply.status_code == 200, reply.text


def notifier_settings(redis_url: str, **overrides: Any) -> NotifierSettings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "api_key": API_KEY,
        "jwt_secret": JWT_SECRET,
        "notifier_retry_base": 0.05,
        "notifier_retry_max": 0.2,
        "notifier_max_attempts": 3,
        "notifier_claim_idle": 2.0,
        **overrides,
    }
    return NotifierSettings(**values)


def senders(smtp: SmtpServer, push: PushEndpoint, twilio: TwilioApi) -> Senders:
    return Senders(
        email=EmailSender(
            host=smtp.host,
            port=smtp.port,
            sender="ArchMesh <notify@archmesh.test>",
            security="none",
            timeout=3.0,
        ),
        push=PushSender(
            vapid_key=VAPID_KEY,
            subject="mailto:ops@archmesh.test",
            timeout=3.0,
            ssl_context=loopback_certificates().client_context(),
        ),
        sms=SmsSender(
            account_sid=twilio.account_sid,
            auth_token=twilio.auth_token,
            sender=twilio.sender,
            base_url=twilio.base_url,
            timeout=3.0,
        ),
    )


@asynccontextmanager
async def notifier_stack(
    redis_url: str,
    smtp: SmtpServer,
    push: PushEndpoint,
    twilio: TwilioApi,
    start: datetime = datetime(2026, 1, 15, 12, 0, tzinfo=UTC),
    **overrides: Any,
) -> AsyncIterator[Stack]:
    clock = MovableClock(start)
    settings = notifier_settings(redis_url, **overrides)
    notifier = Notifier(settings, clock=clock, senders=senders(smtp, push, twilio))
    async with notifier.lifespan():
        transport = httpx.ASGITransport(app=notifier.app)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://notifier", headers=headers, timeout=10
        ) as http:
            yield Stack(notifier, http, clock, smtp, push, twilio)
