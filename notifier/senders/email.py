"""Email over SMTP (aiosmtplib): one reused connection per burst of messages."""

from __future__ import annotations

import asyncio
import email.message
import email.policy
import email.utils
import ssl
from dataclasses import dataclass
from typing import Literal

import aiosmtplib

from notifier.senders.base import DeliveryError, quote_remote
from notifier.settings import NotifierSettings

Security = Literal["none", "starttls", "tls"]

# Seconds a connection stays open without sends; a burst reuses it, a lull lets it go.
DEFAULT_IDLE = 5.0


@dataclass(frozen=True)
class EmailMessage:
    to: str
    subject: str
    text: str
    html: str | None = None
    # Stable per notification: a resend after a crash carries the same Message-ID, which mail
    # stores use to drop the copy.
    message_id: str | None = None
    # Extra headers, e.g. List-Unsubscribe and List-Unsubscribe-Post (RFC 8058).
    headers: tuple[tuple[str, str], ...] = ()
    # Sent as `X-ArchMesh-Notification`: the provider's bounce and complaint events quote it,
    # and it leads them back to the delivery (notifier/providers_email.py).
    notification_id: str | None = None


NOTIFICATION_HEADER = "X-ArchMesh-Notification"


class _Unfolded(str):
    """A header value sent as given, on one line. The email package would fold a long
    `List-Unsubscribe` URL into RFC 2047 encoded words, which no mail client reads as a URL;
    a value with a `name` is stored as a header object and folded by its own `fold`."""

    name: str

    def __new__(cls, name: str, value: str) -> _Unfolded:
        if not value.isascii() or any(c in value for c in "\r\n") or len(name + value) > 990:
            raise ValueError(f"{name}: a header value must be one ASCII line under 990 bytes")
        header = super().__new__(cls, value)
        header.name = name
        return header

    def fold(self, *, policy: email.policy.Policy) -> str:
        return f"{self.name}: {self}{policy.linesep}"


class EmailSender:
    """Sends through one SMTP connection, opened lazily and closed after `idle` quiet seconds.

    Concurrent `send()` calls are serialized on that connection. A cached connection the
    server dropped in the meantime is replaced once, transparently.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        security: Security = "starttls",
        username: str = "",
        password: str = "",
        timeout: float = 10.0,
        idle: float = DEFAULT_IDLE,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self._from = sender
        self._envelope_from = email.utils.parseaddr(sender)[1]
        if "@" not in self._envelope_from:
            raise ValueError("the email sender must contain an address, e.g. 'App <app@host>'")
        self._msgid_domain = self._envelope_from.rpartition("@")[2]
        self._password = password
        self._timeout = timeout
        self._idle = idle
        self._client = aiosmtplib.SMTP(
            hostname=host,
            port=port,
            username=username or None,
            password=password or None,
            timeout=timeout,
            use_tls=security == "tls",
            # Explicit False/True: never let a server without STARTTLS downgrade us silently.
            start_tls=security == "starttls",
            tls_context=tls_context,
        )
        self._lock = asyncio.Lock()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._sends = 0  # bumped per send, so a stale idle timer cannot close a busy connection
        self._closers: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, s: NotifierSettings) -> EmailSender | None:
        if not s.smtp_host:
            return None
        return cls(
            host=s.smtp_host,
            port=s.smtp_port,
            sender=s.email_from,
            security=s.smtp_security,
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value() if s.smtp_password else "",
            timeout=s.smtp_timeout,
        )

    async def send(self, message: EmailMessage) -> None:
        mime, recipient = self._build(message)
        async with self._lock:
            self._cancel_idle_timer()
            self._sends += 1
            try:
                await self._deliver(mime, recipient)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                raise self._refused(exc) from exc
            except aiosmtplib.SMTPResponseException as exc:
                if not isinstance(exc, _MESSAGE_ERRORS):
                    self._client.close()  # greeting/EHLO/AUTH failed: start clean next time
                raise self._response_error(exc) from exc
            except (aiosmtplib.SMTPException, OSError, ValueError) as exc:
                self._client.close()
                raise self._link_error(exc) from exc
            except asyncio.CancelledError:
                self._client.close()  # cancelled mid-transaction: the session state is unknown
                raise
            finally:
                self._arm_idle_timer()

    async def aclose(self) -> None:
        self._cancel_idle_timer()
        async with self._lock:
            await self._quit()

    # -- delivery ---------------------------------------------------------------------------

    async def _deliver(self, mime: email.message.EmailMessage, recipient: str) -> None:
        client = self._client
        if client.is_connected:
            try:
                await client.send_message(mime, sender=self._envelope_from, recipients=[recipient])
                return
            except aiosmtplib.SMTPServerDisconnected:
                # The server dropped the idle connection before we noticed: one fresh attempt.
                client.close()
        await client.connect()
        await client.send_message(mime, sender=self._envelope_from, recipients=[recipient])

    def _build(self, message: EmailMessage) -> tuple[email.message.EmailMessage, str]:
        recipient = email.utils.parseaddr(message.to)[1]
        if "@" not in recipient:
            raise DeliveryError("invalid recipient email address", permanent=True)
        mime = email.message.EmailMessage()
        try:
            mime["From"] = self._from
            mime["To"] = message.to
            mime["Subject"] = message.subject
            mime["Date"] = email.utils.formatdate(usegmt=True)
            mime["Message-ID"] = (
                f"<{message.message_id}@{self._msgid_domain}>"
                if message.message_id
                else email.utils.make_msgid(domain=self._msgid_domain)
            )
            if message.notification_id is not None:
                mime[NOTIFICATION_HEADER] = _Unfolded(NOTIFICATION_HEADER, message.notification_id)
            for name, value in message.headers:
                mime[name] = _Unfolded(name, value)
            mime.set_content(message.text)
            if message.html is not None:
                mime.add_alternative(message.html, subtype="html")
        except (ValueError, TypeError) as exc:  # e.g. a line break in a header: injection
            raise DeliveryError(f"invalid email message: {exc}", permanent=True) from None
        return mime, recipient

    # -- error classification ------------------------------------------------------------------

    def _quote(self, text: str) -> str:
        return quote_remote(text, (self._password,))

    def _refused(self, exc: aiosmtplib.SMTPRecipientsRefused) -> DeliveryError:
        codes = [refusal.code for refusal in exc.recipients] or [0]
        detail = self._quote(exc.recipients[0].message) if exc.recipients else ""
        return DeliveryError(
            f"recipient refused: {codes[0]} {detail}".rstrip(),
            permanent=all(code >= 500 for code in codes),
        )

    def _response_error(self, exc: aiosmtplib.SMTPResponseException) -> DeliveryError:
        what = _STAGE.get(type(exc), "SMTP server answered")
        reason = f"{what}: {exc.code} {self._quote(exc.message)}".rstrip()
        # 5xx to this message's MAIL/RCPT/DATA is final. A 5xx at greeting, EHLO or AUTH is a
        # server or credentials problem an operator fixes; the message itself may still go.
        return DeliveryError(reason, permanent=exc.code >= 500 and isinstance(exc, _MESSAGE_ERRORS))

    def _link_error(self, exc: Exception) -> DeliveryError:
        if isinstance(exc, ssl.SSLError):  # before ValueError: certificate errors are both
            return DeliveryError(f"TLS with the SMTP server failed: {exc.reason or 'handshake'}")
        if isinstance(exc, ValueError):  # aiosmtplib: an address it cannot send safely
            return DeliveryError(f"message not sendable: {self._quote(str(exc))}", permanent=True)
        if isinstance(exc, TimeoutError):
            return DeliveryError("SMTP server timed out")
        return DeliveryError(f"SMTP server unreachable: {type(exc).__name__}")

    # -- connection lifetime -------------------------------------------------------------------

    def _arm_idle_timer(self) -> None:
        generation = self._sends
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(self._idle, self._on_idle, generation)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _on_idle(self, generation: int) -> None:
        if generation != self._sends or self._lock.locked():
            return
        task = asyncio.get_running_loop().create_task(self._close_if_idle(generation))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _close_if_idle(self, generation: int) -> None:
        async with self._lock:
            if generation == self._sends:
                await self._quit()

    async def _quit(self) -> None:
        if not self._client.is_connected:
            return
        try:
            await asyncio.wait_for(self._client.quit(), self._timeout)
        except (aiosmtplib.SMTPException, OSError):
            self._client.close()


# Refusals that concern this one message (its envelope or content), not the server link.
_MESSAGE_ERRORS = (
    aiosmtplib.SMTPRecipientRefused,
    aiosmtplib.SMTPSenderRefused,
    aiosmtplib.SMTPDataError,
)
_STAGE: dict[type[Exception], str] = {
    aiosmtplib.SMTPRecipientRefused: "recipient refused",
    aiosmtplib.SMTPSenderRefused: "sender refused",
    aiosmtplib.SMTPDataError: "message refused",
    aiosmtplib.SMTPAuthenticationError: "SMTP login refused",
    aiosmtplib.SMTPConnectResponseError: "SMTP server refused the connection",
    aiosmtplib.SMTPHeloError: "SMTP server refused EHLO",
}
