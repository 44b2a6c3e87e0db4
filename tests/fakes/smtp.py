"""A real SMTP server (aiosmtpd) on a loopback port that records what it receives.

    with SmtpServer(starttls=True) as smtp:
        ... deliver to 127.0.0.1:smtp.port, trusting smtp.ca_file ...
        smtp.wait_for_messages(1)
        [received] = smtp.messages
        received.message["Subject"], received.rcpt_tos, received.connection

It runs in its own thread and event loop, so both in-process senders and notifier
subprocesses can deliver to it; every accessor is thread-safe.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.fakes.tls import loopback_certificates


@dataclass(frozen=True)
class ReceivedEmail:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: email.message.EmailMessage
    connection: int  # 1-based number of the SMTP connection that carried it
    tls: bool
    login: str | None  # the AUTH user, when the client logged in


class SmtpServer:
    """aiosmtpd on 127.0.0.1:<free port>; plain, STARTTLS (required) or implicit TLS.

    `auth=(user, password)` requires a login. `refuse(address)` answers RCPT with 550 (or the
    code given). `drop_connections()` closes every client connection, as a server's own idle
    timeout would.
    """

    def __init__(
        self,
        *,
        starttls: bool = False,
        implicit_tls: bool = False,
        auth: tuple[str, str] | None = None,
    ) -> None:
        if starttls and implicit_tls:
            raise ValueError("starttls and implicit_tls exclude each other")
        self.host = "127.0.0.1"
        self.auth = auth
        self._lock = threading.Condition()
        self._messages: list[ReceivedEmail] = []
        self._refused: dict[str, str] = {}
        self._open: set[_RecordingSMTP] = set()
        self._connections = 0
        self._tls = starttls or implicit_tls
        certificates = loopback_certificates() if self._tls else None
        self.ca_file = certificates.ca_file if certificates else None
        smtp_options: dict[str, Any] = {}
        if starttls and certificates:
            smtp_options.update(tls_context=certificates.server_context(), require_starttls=True)
        if auth is not None:
            # aiosmtpd warns about required AUTH without TLS (it is a test peer): the handler
            # enforces the login at MAIL instead.
            smtp_options.update(authenticator=self._authenticate, auth_require_tls=self._tls)
        self._controller = _Controller(
            self,
            _Handler(self),
            hostname=self.host,
            port=0,  # the kernel picks a free port: no race with other tests
            server_hostname="fake-smtp.test",
            ssl_context=certificates.server_context() if implicit_tls and certificates else None,
            **smtp_options,
        )
        self._running = False

    @property
    def port(self) -> int:
        """The listening port (known once started)."""
        return int(self._controller.port)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> SmtpServer:
        self._controller.start()
        self._running = True
        return self

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._controller.stop()

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- control and observation --------------------------------------------------------------

    def refuse(self, address: str, code: int = 550, text: str = "5.1.1 no such user") -> None:
        with self._lock:
            self._refused[address.lower()] = f"{code} {text}"

    @property
    def messages(self) -> list[ReceivedEmail]:
        with self._lock:
            return list(self._messages)

    @property
    def connections(self) -> int:
        """SMTP sessions opened so far (connections that sent EHLO/HELO)."""
        with self._lock:
            return self._connections

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[ReceivedEmail]:
        """Block until at least `count` messages arrived (use when the sender is elsewhere)."""
        return self._wait(lambda: len(self._messages) >= count, timeout, f"{count} emails")

    def wait_until_idle(self, timeout: float = 10.0) -> None:
        """Block until no client connection is open."""
        self._wait(lambda: not self._open, timeout, "all SMTP connections to close")

    def drop_connections(self, timeout: float = 5.0) -> None:
        with self._lock:
            sessions = list(self._open)
        for session in sessions:
            self._controller.loop.call_soon_threadsafe(session.abort)
        self.wait_until_idle(timeout)

    # -- called from the server thread ----------------------------------------------------------

    def _wait(self, done: Any, timeout: float, what: str) -> list[ReceivedEmail]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
                self._lock.wait(left)
            return list(self._messages)

    def _opened(self, session: _RecordingSMTP) -> None:
        with self._lock:
            self._open.add(session)

    def _closed(self, session: _RecordingSMTP) -> None:
        with self._lock:
            self._open.discard(session)
            self._lock.notify_all()

    def _greeted(self, session: _RecordingSMTP) -> None:
        with self._lock:
            if session.number == 0:
                self._connections += 1
                session.number = self._connections

    def _refusal(self, address: str) -> str | None:
        with self._lock:
            return self._refused.get(address.lower())

    def _record(self, received: ReceivedEmail) -> None:
        with self._lock:
            self._messages.append(received)
            self._lock.notify_all()

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert self.auth is not None
        ok = (
            isinstance(data, LoginPassword)
            and (
                data.login.decode(),
                data.password.decode(),
            )
            == self.auth
        )
        login = data.login.decode() if ok else None
        return AuthResult(success=ok, handled=False, auth_data=login)


class _RecordingSMTP(SMTP):  # type: ignore[misc]
    """aiosmtpd's protocol, reporting its connection's life to the SmtpServer."""

    def __init__(self, fake: SmtpServer, *args: Any, **kwargs: Any) -> None:
        self.fake = fake
        self.number = 0
        super().__init__(*args, **kwargs)

    def connection_made(self, transport: Any) -> None:
        first = self.transport is None  # STARTTLS calls this again with the TLS transport
        super().connection_made(transport)
        if first:
            self.fake._opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.fake._closed(self)
        super().connection_lost(error)

    def abort(self) -> None:
        # Abort the raw socket: a TLS close would wait for the client's close_notify.
        transport = self._original_transport or self.transport
        if transport is not None:
            transport.abort()


class _Controller(Controller):  # type: ignore[misc]
    def __init__(self, fake: SmtpServer, *args: Any, **kwargs: Any) -> None:
        self.fake = fake
        super().__init__(*args, **kwargs)

    def _trigger_server(self) -> None:
        # Bound to port 0: learn the real port before the readiness probe connects to it.
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()

    def factory(self) -> _RecordingSMTP:
        return _RecordingSMTP(self.fake, self.handler, **self.SMTP_kwargs)


class _Handler:
    def __init__(self, fake: SmtpServer) -> None:
        self.fake = fake

    async def handle_EHLO(
        self,
        server: _RecordingSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        self.fake._greeted(server)
        return responses

    async def handle_HELO(
        self, server: _RecordingSMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        session.host_name = hostname
        self.fake._greeted(server)
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self,
        server: _RecordingSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.fake.auth is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: _RecordingSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        refusal = self.fake._refusal(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(
        self, server: _RecordingSMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content or envelope.content
        message = email.message_from_bytes(raw, policy=email.policy.default)
        login = session.auth_data if isinstance(session.auth_data, str) else None
        self.fake._record(
            ReceivedEmail(
                mail_from=envelope.mail_from,
                rcpt_tos=tuple(envelope.rcpt_tos),
                message=message,  # type: ignore[arg-type]
                connection=server.number,
                tls=server.transport.get_extra_info("ssl_object") is not None,
                login=login,
            )
        )
        return "250 OK: queued"
