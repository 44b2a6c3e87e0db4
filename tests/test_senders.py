"""The notifier's external senders against real peers: aiosmtpd, a Web Push service, Twilio's API.

The peers (tests/fakes) run on loopback ports in background threads of this process.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from notifier.senders import (
    DeliveryError,
    EmailMessage,
    EmailSender,
    PushSender,
    PushTarget,
    SmsSender,
    SubscriptionGone,
)
from notifier.senders.push import load_vapid_key
from notifier.settings import NotifierSettings
from tests.fakes.push_endpoint import FakeSubscription, PushEndpoint
from tests.fakes.smtp import SmtpServer
from tests.fakes.tls import loopback_certificates
from tests.fakes.twilio_api import TwilioApi
from tests.servers import free_port

SMTP_USER = "mailer"
SMTP_PASSWORD = "smtp-pass-7f3a9c"


async def eventually(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll without blocking the event loop (the senders under test live on it)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)


# -- email -----------------------------------------------------------------------------------


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
async def mailer(smtp: SmtpServer) -> AsyncIterator[EmailSender]:
    sender = EmailSender(
        host=smtp.host, port=smtp.port, sender="ArchMesh <noreply@archmesh.test>", security="none"
    )
    yield sender
    await sender.aclose()


def note(number: int = 0, **fields: str | None) -> EmailMessage:
    values: dict[str, str | None] = {
        "to": f"user{number}@example.test",
        "subject": f"Review needed #{number}",
        "text": f"Plain body {number}",
        "html": f"<p>HTML body <b>{number}</b></p>",
    }
    values.update(fields)
    return EmailMessage(**values)  # type: ignore[arg-type]


async def test_email_arrives_as_multipart_alternative_with_text_and_html(
    smtp: SmtpServer, mailer: EmailSender
) -> None:
    await mailer.send(note(1, to="Ada <ada@example.test>"))

    [got] = smtp.messages
    assert got.mail_from == "noreply@archmesh.test"
    assert got.rcpt_tos == ("ada@example.test",)
    message = got.message
    assert message.get_content_type() == "multipart/alternative"
    assert message["Subject"] == "Review needed #1"
    assert message["To"] == "Ada <ada@example.test>"
    assert message["From"] == "ArchMesh <noreply@archmesh.test>"
    assert message["Message-ID"].endswith("@archmesh.test>")
    assert message["Date"]
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert text.get_content().strip() == "Plain body 1"
    assert html is not None
    assert html.get_content().strip() == "<p>HTML body <b>1</b></p>"


async def test_text_only_email_is_a_single_part(smtp: SmtpServer, mailer: EmailSender) -> None:
    await mailer.send(note(2, html=None))

    [got] = smtp.messages
    assert got.message.get_content_type() == "text/plain"
    assert got.message.get_content().strip() == "Plain body 2"


async def test_a_burst_of_20_concurrent_emails_uses_one_connection(
    smtp: SmtpServer, mailer: EmailSender
) -> None:
    await asyncio.gather(*(mailer.send(note(i)) for i in range(20)))

    assert smtp.connections == 1
    received = smtp.messages
    assert sorted(m.rcpt_tos[0] for m in received) == sorted(
        f"user{i}@example.test" for i in range(20)
    )
    assert {m.connection for m in received} == {1}


async def test_idle_connection_is_closed_and_the_next_send_reconnects(smtp: SmtpServer) -> None:
    sender = EmailSender(
        host=smtp.host, port=smtp.port, sender="noreply@archmesh.test", security="none", idle=0.1
    )
    try:
        await sender.send(note(1))
        assert smtp.open_connections == 1
        await eventually(lambda: smtp.open_connections == 0)  # closed by the sender, idle

        await sender.send(note(2))
        assert [m.connection for m in smtp.messages] == [1, 2]
    finally:
        await sender.aclose()


async def test_connection_dropped_by_the_server_is_replaced_transparently(
    smtp: SmtpServer, mailer: EmailSender
) -> None:
    await mailer.send(note(1))
    # The server closes the cached connection while the sender's loop is not looking (this call
    # blocks the loop), so the next send finds out only when it writes: one reconnect + resend.
    smtp.drop_connections()

    await mailer.send(note(2))
    await mailer.send(note(3))
    assert [m.connection for m in smtp.messages] == [1, 2, 2]


async def test_starttls_with_login_against_a_verified_certificate() -> None:
    with SmtpServer(starttls=True, auth=(SMTP_USER, SMTP_PASSWORD)) as smtp:
        sender = EmailSender(
            host="localhost",
            port=smtp.port,
            sender="noreply@archmesh.test",
            security="starttls",
            username=SMTP_USER,
            password=SMTP_PASSWORD,
            tls_context=loopback_certificates().client_context(),
        )
        try:
            await sender.send(note(1))
        finally:
            await sender.aclose()
        [got] = smtp.messages
        assert got.tls
        assert got.login == SMTP_USER


async def test_implicit_tls() -> None:
    with SmtpServer(implicit_tls=True) as smtp:
        sender = EmailSender(
            host=smtp.host,
            port=smtp.port,
            sender="noreply@archmesh.test",
            security="tls",
            tls_context=loopback_certificates().client_context(),
        )
        try:
            await sender.send(note(1))
        finally:
            await sender.aclose()
        assert smtp.messages[0].tls


async def test_untrusted_certificate_is_a_transient_failure_and_nothing_is_sent() -> None:
    with SmtpServer(starttls=True) as smtp:
        # The system trust store does not know the test CA: STARTTLS must fail, not degrade.
        sender = EmailSender(
            host=smtp.host,
            port=smtp.port,
            sender="noreply@archmesh.test",
            security="starttls",
            tls_context=ssl.create_default_context(),
        )
        try:
            with pytest.raises(DeliveryError) as caught:
                await sender.send(note(1))
        finally:
            await sender.aclose()
        assert not caught.value.permanent
        assert smtp.messages == []


async def test_recipient_refused_with_550_is_permanent_and_the_connection_stays_usable(
    smtp: SmtpServer, mailer: EmailSender
) -> None:
    smtp.refuse("gone@example.test", 550, "5.1.1 no such user")

    with pytest.raises(DeliveryError) as caught:
        await mailer.send(note(1, to="gone@example.test"))
    assert caught.value.permanent
    assert "550" in caught.value.reason
    assert "no such user" in caught.value.reason

    await mailer.send(note(2))
    assert [(m.rcpt_tos, m.connection) for m in smtp.messages] == [(("user2@example.test",), 1)]


async def test_recipient_deferred_with_451_is_transient(
    smtp: SmtpServer, mailer: EmailSender
) -> None:
    smtp.refuse("busy@example.test", 451, "4.2.1 try later")

    with pytest.raises(DeliveryError) as caught:
        await mailer.send(note(1, to="busy@example.test"))
    assert not caught.value.permanent


async def test_unreachable_server_is_transient() -> None:
    sender = EmailSender(
        host="127.0.0.1", port=free_port(), sender="noreply@archmesh.test", security="none"
    )
    with pytest.raises(DeliveryError) as caught:
        await sender.send(note(1))
    await sender.aclose()
    assert not caught.value.permanent
    assert "unreachable" in caught.value.reason


async def test_header_injection_is_refused_before_anything_is_sent(
    smtp: SmtpServer, mailer: EmailSender
) -> None:
    with pytest.raises(DeliveryError) as caught:
        await mailer.send(note(1, subject="Hi\r\nBcc: victim@example.test"))
    assert caught.value.permanent
    with pytest.raises(DeliveryError):
        await mailer.send(note(1, to="not-an-address"))
    assert smtp.messages == []
    assert smtp.connections == 0


async def test_smtp_password_never_appears_in_a_reason() -> None:
    with SmtpServer(auth=(SMTP_USER, SMTP_PASSWORD)) as smtp:
        wrong = EmailSender(
            host=smtp.host,
            port=smtp.port,
            sender="noreply@archmesh.test",
            security="none",
            username=SMTP_USER,
            password=SMTP_PASSWORD + "-old",
        )
        right = EmailSender(
            host=smtp.host,
            port=smtp.port,
            sender="noreply@archmesh.test",
            security="none",
            username=SMTP_USER,
            password=SMTP_PASSWORD,
        )
        # A server that quotes what it got back at us (badly written, but it happens).
        smtp.refuse("echo@example.test", 550, f"5.1.1 rejected {SMTP_PASSWORD}")
        try:
            with pytest.raises(DeliveryError) as login_failed:
                await wrong.send(note(1))
            with pytest.raises(DeliveryError) as echoed:
                await right.send(note(2, to="echo@example.test"))
        finally:
            await wrong.aclose()
            await right.aclose()
    assert "535" in login_failed.value.reason
    assert SMTP_PASSWORD not in login_failed.value.reason
    assert SMTP_PASSWORD not in echoed.value.reason
    assert "***" in echoed.value.reason


def test_email_sender_from_settings() -> None:
    assert EmailSender.from_settings(NotifierSettings(smtp_host="")) is None
    settings = NotifierSettings(
        smtp_host="mail.example.test",
        smtp_password=SecretStr(SMTP_PASSWORD),
        email_from="Ops <ops@example.test>",
    )
    assert isinstance(EmailSender.from_settings(settings), EmailSender)


# -- web push ----------------------------------------------------------------------------------

VAPID_KEY = ec.generate_private_key(ec.SECP256R1())
VAPID_SUBJECT = "mailto:ops@archmesh.test"


def raw_b64url(key: ec.EllipticCurvePrivateKey) -> str:
    raw = key.private_numbers().private_value.to_bytes(32, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def target(subscription: FakeSubscription) -> PushTarget:
    return PushTarget(subscription.endpoint, subscription.p256dh, subscription.auth)


@pytest.fixture
def push() -> Iterator[PushEndpoint]:
    with PushEndpoint() as endpoint:
        yield endpoint


@pytest.fixture
async def pusher() -> AsyncIterator[PushSender]:
    sender = PushSender(
        vapid_key=VAPID_KEY,
        subject=VAPID_SUBJECT,
        timeout=2.0,
        ssl_context=loopback_certificates().client_context(),
    )
    yield sender
    await sender.aclose()


async def test_push_payload_decrypts_to_what_was_sent_with_vapid_ttl_and_urgency(
    push: PushEndpoint, pusher: PushSender
) -> None:
    subscription = push.new_subscription()
    payload = {"id": "n1", "title": "Review needed", "body": "Workflow wf-7 \u2603", "n": 3}

    await pusher.send(target(subscription), payload, ttl=3600, urgency="high")

    [got] = push.received_for(subscription)
    assert got.payload == payload
    assert got.ttl == 3600
    assert got.urgency == "high"
    assert got.claims is not None
    assert got.claims["aud"] == push.origin
    assert got.claims["sub"] == VAPID_SUBJECT
    assert time.time() < got.claims["exp"] <= time.time() + 86400
    assert got.vapid_public_key == pusher.application_server_key


async def test_each_push_gets_fresh_claims_for_its_own_origin(pusher: PushSender) -> None:
    with PushEndpoint() as first, PushEndpoint() as second:
        await pusher.send(target(first.new_subscription()), {"a": 1}, ttl=60, urgency="low")
        await pusher.send(target(second.new_subscription()), {"a": 2}, ttl=0, urgency="very-low")
        [one], [two] = first.received, second.received
    assert one.claims is not None
    assert two.claims is not None
    assert (one.claims["aud"], two.claims["aud"]) == (first.origin, second.origin)
    assert (one.ttl, two.ttl) == (60, 0)


@pytest.mark.parametrize("status", [404, 410])
async def test_gone_subscription_raises_subscription_gone(
    push: PushEndpoint, pusher: PushSender, status: int
) -> None:
    subscription = push.new_subscription()
    push.answer(subscription, status)

    with pytest.raises(SubscriptionGone) as caught:
        await pusher.send(target(subscription), {"a": 1}, ttl=60, urgency="normal")
    assert caught.value.permanent
    assert caught.value.endpoint == subscription.endpoint
    assert push.requests[0].claims is not None  # it was a properly signed request


@pytest.mark.parametrize(
    ("status", "permanent"), [(500, False), (503, False), (429, False), (400, True), (413, True)]
)
async def test_push_service_errors_are_classified(
    push: PushEndpoint, pusher: PushSender, status: int, permanent: bool
) -> None:
    subscription = push.new_subscription()
    push.answer(subscription, status, "service says no")

    with pytest.raises(DeliveryError) as caught:
        await pusher.send(target(subscription), {"a": 1}, ttl=60, urgency="normal")
    assert not isinstance(caught.value, SubscriptionGone)
    assert caught.value.permanent is permanent
    assert str(status) in caught.value.reason
    assert "service says no" in caught.value.reason
    assert raw_b64url(VAPID_KEY) not in caught.value.reason


async def test_push_timeout_and_unreachable_service_are_transient(push: PushEndpoint) -> None:
    sender = PushSender(
        vapid_key=VAPID_KEY,
        subject=VAPID_SUBJECT,
        timeout=0.3,
        ssl_context=loopback_certificates().client_context(),
    )
    slow = push.new_subscription()
    push.delay(slow, 5)
    closed = PushTarget(f"https://127.0.0.1:{free_port()}/push/x", slow.p256dh, slow.auth)
    try:
        with pytest.raises(DeliveryError) as timed_out:
            await sender.send(target(slow), {"a": 1}, ttl=60, urgency="normal")
        with pytest.raises(DeliveryError) as unreachable:
            await sender.send(closed, {"a": 1}, ttl=60, urgency="normal")
    finally:
        await sender.aclose()
    assert not timed_out.value.permanent
    assert "timed out" in timed_out.value.reason
    assert not unreachable.value.permanent


async def test_push_refuses_bad_targets_without_sending(
    push: PushEndpoint, pusher: PushSender
) -> None:
    good = push.new_subscription()
    bad_targets = [
        PushTarget(good.endpoint.replace("https:", "http:"), good.p256dh, good.auth),
        PushTarget(good.endpoint, "not-a-key", good.auth),
        PushTarget(good.endpoint, good.p256dh, "c2hvcnQ"),
    ]
    for bad in bad_targets:
        with pytest.raises(DeliveryError) as caught:
            await pusher.send(bad, {"a": 1}, ttl=60, urgency="normal")
        assert caught.value.permanent
    with pytest.raises(DeliveryError, match="urgency"):
        await pusher.send(target(good), {"a": 1}, ttl=60, urgency="asap")
    with pytest.raises(DeliveryError, match="bytes"):
        await pusher.send(target(good), {"a": "x" * 4000}, ttl=60, urgency="normal")
    assert push.requests == []


def test_vapid_key_is_accepted_as_pem_or_raw_base64url() -> None:
    pem = VAPID_KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    sec1 = VAPID_KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    expected = VAPID_KEY.private_numbers().private_value
    for text in (pem, sec1, pem.replace("\n", "\\n"), raw_b64url(VAPID_KEY)):
        assert load_vapid_key(text).private_numbers().private_value == expected

    secret = raw_b64url(VAPID_KEY)[:-4] + "!!!!"
    with pytest.raises(ValueError, match="neither") as caught:
        load_vapid_key(secret)
    assert secret not in str(caught.value)


def test_push_sender_from_settings() -> None:
    assert PushSender.from_settings(NotifierSettings(vapid_private_key=None)) is None
    settings = NotifierSettings(vapid_private_key=SecretStr(raw_b64url(VAPID_KEY)))
    sender = PushSender.from_settings(settings)
    assert sender is not None
    reference = PushSender(vapid_key=VAPID_KEY, subject=VAPID_SUBJECT)
    assert sender.application_server_key == reference.application_server_key


# -- sms ---------------------------------------------------------------------------------------


@pytest.fixture
def twilio() -> Iterator[TwilioApi]:
    with TwilioApi() as api:
        yield api


def sms_sender(twilio: TwilioApi, **overrides: object) -> SmsSender:
    options: dict[str, object] = {
        "account_sid": twilio.account_sid,
        "auth_token": twilio.auth_token,
        "sender": twilio.sender,
        "base_url": twilio.base_url,
        "timeout": 2.0,
    }
    options.update(overrides)
    return SmsSender(**options)  # type: ignore[arg-type]


@pytest.fixture
async def texter(twilio: TwilioApi) -> AsyncIterator[SmsSender]:
    sender = sms_sender(twilio)
    yield sender
    await sender.aclose()


async def test_sms_reaches_twilio_with_to_from_and_body(
    twilio: TwilioApi, texter: SmsSender
) -> None:
    sid = await texter.send("+15551230001", "Workflow wf-7 needs your review \u2705")
    second = await texter.send("+15551230002", "second")

    first_sms, second_sms = twilio.messages
    assert first_sms.sid == sid
    assert sid.startswith("SM")
    assert second_sms.sid == second
    assert first_sms.to == "+15551230001"
    assert first_sms.from_ == twilio.sender
    assert first_sms.body == "Workflow wf-7 needs your review \u2705"
    assert first_sms.account_sid == twilio.account_sid


@pytest.mark.parametrize("code", [21610, 21211, 21614, 21408])
async def test_twilio_refusals_for_the_number_are_permanent(
    twilio: TwilioApi, texter: SmsSender, code: int
) -> None:
    twilio.fail("+15551230009", 400, code=code)

    with pytest.raises(DeliveryError) as caught:
        await texter.send("+15551230009", "hello")
    assert caught.value.permanent
    assert str(code) in caught.value.reason
    assert twilio.messages == []


@pytest.mark.parametrize(
    ("status", "code", "permanent"),
    [(500, None, False), (503, 20503, False), (429, 20429, False), (400, 21604, True)],
)
async def test_other_twilio_errors_are_classified_by_status(
    twilio: TwilioApi, texter: SmsSender, status: int, code: int | None, permanent: bool
) -> None:
    twilio.fail("+15551230009", status, code=code)

    with pytest.raises(DeliveryError) as caught:
        await texter.send("+15551230009", "hello")
    assert caught.value.permanent is permanent
    assert str(status) in caught.value.reason


async def test_sms_timeout_and_unreachable_api_are_transient(twilio: TwilioApi) -> None:
    twilio.delay("+15551230009", 5)
    slow = sms_sender(twilio, timeout=0.3)
    down = sms_sender(twilio, base_url=f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(DeliveryError) as timed_out:
            await slow.send("+15551230009", "hello")
        with pytest.raises(DeliveryError) as unreachable:
            await down.send("+15551230001", "hello")
    finally:
        await slow.aclose()
        await down.aclose()
    assert not timed_out.value.permanent
    assert "timed out" in timed_out.value.reason
    assert not unreachable.value.permanent


async def test_twilio_token_never_appears_in_a_reason(twilio: TwilioApi) -> None:
    wrong = sms_sender(twilio, auth_token=twilio.auth_token[::-1])
    right = sms_sender(twilio)
    # An API answer that quotes the credentials back.
    twilio.fail("+15551230008", 400, code=21604, message=f"echo {twilio.auth_token}")
    try:
        with pytest.raises(DeliveryError) as unauthorized:
            await wrong.send("+15551230001", "hello")
        with pytest.raises(DeliveryError) as echoed:
            await right.send("+15551230008", "hello")
    finally:
        await wrong.aclose()
        await right.aclose()
    assert unauthorized.value.permanent
    assert "401" in unauthorized.value.reason
    for reason in (unauthorized.value.reason, echoed.value.reason):
        assert twilio.auth_token not in reason
        assert twilio.auth_token[::-1] not in reason
    assert "***" in echoed.value.reason


def test_sms_sender_from_settings() -> None:
    complete = {
        "twilio_account_sid": "AC" + "0" * 32,
        "twilio_auth_token": SecretStr("token"),
        "twilio_from": "+15005550006",
    }
    assert isinstance(SmsSender.from_settings(NotifierSettings(**complete)), SmsSender)
    for missing in complete:
        partial = {key: value for key, value in complete.items() if key != missing}
        assert SmsSender.from_settings(NotifierSettings(**partial)) is None
