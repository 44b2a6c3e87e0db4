"""The notifier's external senders against real peers: aiosmtpd, a Web Push service, Twilio's API.

The peers (tests/fakes) run on loopback ports in background threads of this process.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from pydantic import SecretStr

from notifier.channels import DeliveryError, EmailMessage, EmailSender
from notifier.settings import NotifierSettings
from tests.fakes.smtp import SmtpServer
from tests.fakes.tls import loopback_certificates
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
