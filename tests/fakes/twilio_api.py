"""A stand-in for Twilio's Messages API on a loopback port (plain http, like a local proxy).

with TwilioApi() as twilio:     # twilio.account_sid / auth_token / base_url / sender
    ... ARCHMESH_TWILIO_BASE_URL=twilio.base_url ...
    [sms] = twilio.wait_for(1)
    sms.to, sms.from_, sms.body, sms.sid
    twilio.fail("+15005550009", 400, code=21610)   # unsubscribed: permanent
    twilio.fail("+15005550010", 500)               # transient

Status callbacks, signed as Twilio signs them (`X-Twilio-Signature`: base64 HMAC-SHA1, keyed
with the auth token, of the callback URL followed by each POST parameter's name and value in
name order), POSTed to the `StatusCallback` URL the message was sent with:

    twilio.callbacks_via(notifier.http)          # the public URL's host is our ingress stand-in
    twilio.report(sms, "delivered")              # -> the notifier's HTTP status
    twilio.report(sms, "undelivered", error_code=30003)
    twilio.report(sms, "delivered", token="forged")
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx

from tests.fakes.http import LoopbackHttpServer, Reply, Request

_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<sid>AC[0-9a-f]{32})/Messages\.json$")
_MESSAGES = {
    20003: "Authenticate",
    21211: "The 'To' number is not a valid phone number.",
    21408: "Permission to send an SMS has not been enabled for the region indicated by 'To'.",
    21610: "Attempt to send to unsubscribed recipient",
    21614: "'To' number is not a valid mobile number",
    20429: "Too Many Requests",
}


@dataclass(frozen=True)
class ReceivedSms:
    sid: str
    account_sid: str
    to: str
    from_: str
    body: str
    status_callback: str | None = None


class TwilioApi(LoopbackHttpServer):
    def __init__(self) -> None:
        super().__init__(tls=False)
        self.account_sid = "AC" + secrets.token_hex(16)
        self.auth_token = secrets.token_hex(16)
        self.sender = "+15005550006"
        self._lock = threading.Condition()
        self._failures: dict[str, tuple[int, int | None, str]] = {}
        self._delays: dict[str, float] = {}
        self._late: dict[str, float] = {}
        self._messages: list[ReceivedSms] = []
        self._rejected: list[tuple[int, str]] = []
        self._via: str | None = None

    @property
    def base_url(self) -> str:
        return self.origin

    # -- control ---------------------------------------------------------------------------------

    def fail(
        self, to: str, status: int, *, code: int | None = None, message: str | None = None
    ) -> None:
        """Answer messages to `to` with `status` and a Twilio-style JSON error body."""
        text = message or _MESSAGES.get(code or 0, "Internal error")
        with self._lock:
            self._failures[to] = (status, code, text)

    def succeed(self, to: str) -> None:
        with self._lock:
            self._failures.pop(to, None)

    def delay(self, to: str, seconds: float) -> None:
        with self._lock:
            self._delays[to] = seconds

    def answer_late(self, to: str, seconds: float) -> None:
        """Take messages to `to` at once (they are in `messages`, callbacks can be sent) but
        answer the send only `seconds` later: Twilio calling back before its reply arrives."""
        with self._lock:
            self._late[to] = seconds

    def callbacks_via(self, origin: str) -> None:
        """Connect to `origin` (e.g. http://127.0.0.1:8100) for every callback, whatever host
        its URL names, as a public https URL reaches the notifier through an ingress; the
        signature still covers the URL as given."""
        self._via = origin.rstrip("/")

    def report(
        self,
        sms: ReceivedSms,
        status: str,
        *,
        error_code: int | None = None,
        token: str | None = None,
    ) -> httpx.Response:
        """POST one status callback for `sms` the way Twilio does; `token` signs it with
        another key (a forger's)."""
        assert sms.status_callback, "the message was sent without a StatusCallback"
        params = {
            "AccountSid": sms.account_sid,
            "ApiVersion": "2010-04-01",
            "From": sms.from_,
            "To": sms.to,
            "MessageSid": sms.sid,
            "SmsSid": sms.sid,
            "MessageStatus": status,
            "SmsStatus": status,
        }
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        signature = twilio_signature(token or self.auth_token, sms.status_callback, params)
        target = sms.status_callback
        if self._via is not None:
            parts = urlsplit(target)
            target = self._via + urlunsplit(("", "", parts.path, parts.query, ""))
        headers = {"X-Twilio-Signature": signature, "User-Agent": "TwilioProxy/1.1"}
        return httpx.post(target, data=params, headers=headers, timeout=10)

    # -- observation -----------------------------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedSms]:
        with self._lock:
            return list(self._messages)

    @property
    def rejected(self) -> list[tuple[int, str]]:
        """(status, message) of every request answered with an error."""
        with self._lock:
            return list(self._rejected)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedSms]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout}s waiting for {count} SMS")
                self._lock.wait(left)
            return list(self._messages)

    # -- serving ---------------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        match = _PATH.match(request.path)
        if request.method != "POST" or match is None:
            return self._error(404, 20404, "The requested resource was not found")
        if not self._authorized(request, match["sid"]):
            return self._error(401, 20003, _MESSAGES[20003])
        form = {k: v[0] for k, v in parse_qs(request.body.decode(), keep_blank_values=True).items()}
        to, from_, body = form.get("To", ""), form.get("From", ""), form.get("Body", "")
        if not to or not from_ or not body:
            return self._error(400, 21604, "'To', 'From' and 'Body' are required")
        with self._lock:
            failure = self._failures.get(to)
            delay = self._delays.get(to, 0.0)
        if delay:
            self.pause(delay)
        if failure is not None:
            return self._error(*failure)
        callback = form.get("StatusCallback") or None
        sms = ReceivedSms("SM" + secrets.token_hex(16), match["sid"], to, from_, body, callback)
        with self._lock:
            self._messages.append(sms)
            self._lock.notify_all()
            late = self._late.get(to, 0.0)
        if late:
            self.pause(late)
        return self._json(201, _resource(sms))

    def _authorized(self, request: Request, sid: str) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        given = request.headers.get("authorization", "")
        return sid == self.account_sid and secrets.compare_digest(given, f"Basic {expected}")

    def _error(self, status: int, code: int | None, message: str) -> Reply:
        with self._lock:
            self._rejected.append((status, message))
        body: dict[str, object] = {"message": message, "status": status}
        if code is not None:
            body.update(code=code, more_info=f"https://www.twilio.com/docs/errors/{code}")
        return self._json(status, body)

    @staticmethod
    def _json(status: int, body: dict[str, object]) -> Reply:
        return Reply(status, json.dumps(body).encode(), {"Content-Type": "application/json"})


def twilio_signature(token: str, url: str, params: dict[str, str]) -> str:
    """What Twilio puts in `X-Twilio-Signature` (its documented algorithm, written out here
    rather than borrowed from the library the notifier checks it with)."""
    data = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _resource(sms: ReceivedSms) -> dict[str, object]:
    now = formatdate(usegmt=True)
    return {
        "sid": sms.sid,
        "account_sid": sms.account_sid,
        "to": sms.to,
        "from": sms.from_,
        "body": sms.body,
        "status": "queued",
        "direction": "outbound-api",
        "num_segments": "1",
        "num_media": "0",
        "price": None,
        "price_unit": "USD",
        "api_version": "2010-04-01",
        "date_created": now,
        "date_updated": now,
        "date_sent": None,
        "error_code": None,
        "error_message": None,
        "messaging_service_sid": None,
        "uri": f"/2010-04-01/Accounts/{sms.account_sid}/Messages/{sms.sid}.json",
        "subresource_uris": {},
    }
