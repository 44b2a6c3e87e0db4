"""`POST /api/providers/twilio/status`: Twilio's status callbacks for the SMS we sent.

Every SMS is sent with this URL (under ARCHMESH_NOTIFIER_PUBLIC_URL) as its `StatusCallback`.
Twilio signs each callback with the account's auth token (`X-Twilio-Signature`: HMAC-SHA1 of
the exact URL it called and the sorted form parameters, base64); the twilio library's own
`RequestValidator` checks it against the public URL, never the URL the request arrived at
(behind a proxy the two differ, and the client controls the Host). Only final statuses are
recorded: `delivered`, and `undelivered` or `failed` (as `failed`, with Twilio's ErrorCode);
`queued`, `sending` and `sent` change nothing, so a late `sent` never undoes `delivered`.
A callback for a sid not stored yet is held and applied when the deliverer stores it
(notifier/feedback.py), not lost. Refused requests are counted by reason
(`archmesh_notifier_webhooks_refused_total`)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from notifier.feedback import Applied, event_hash
from notifier.feedback_report import Report
from notifier.schemas import DeliveryState
from notifier.senders.sms import STATUS_CALLBACK_PATH
from shared.http_errors import ApiError
from shared.logging import get_logger
from shared.openapi import method_route, operation

if TYPE_CHECKING:
    from collections.abc import Callable

    from notifier.feedback import ProviderFeedback

log = get_logger(__name__)

MAX_FORM = 16 * 1024
SIGNATURE_HEADER = "X-Twilio-Signature"
_FINAL = {
    "delivered": DeliveryState.DELIVERED,
    "undelivered": DeliveryState.FAILED,
    "failed": DeliveryState.FAILED,
}


class StatusTaken(BaseModel):
    """`outcome`: `recorded`, `unchanged` (not a final status, or one is kept already),
    `unmatched` (a message whose status expired), `duplicate` (this very callback came
    before) or `held` (a message whose sid the notifier has not stored yet: applied when it
    is, as Twilio can call back before its answer to the send reaches the notifier)."""

    outcome: Applied


class _Form(dict[str, list[str]]):
    """The callback's parameters, every value of each (what the validator signs)."""

    def getlist(self, name: str) -> list[str]:
        return self[name]

    def first(self, name: str) -> str:
        return self.get(name, [""])[0]


class TwilioStatusApi:
    def __init__(
        self,
        auth_token: str,
        public_url: str,
        feedback: ProviderFeedback,
        clock: Callable[[], datetime],
    ) -> None:
        self._validator = RequestValidator(auth_token)
        self._url = public_url.rstrip("/") + STATUS_CALLBACK_PATH
        self._feedback = feedback
        self._clock = clock

    def routes(self) -> list[Route]:
        return [method_route(STATUS_CALLBACK_PATH, POST=self.status)]

    @operation(
        "Twilio's status callback for an SMS (signed by Twilio)",
        description=f"Form-encoded as Twilio sends it, signed in `{SIGNATURE_HEADER}`; "
        "403 `invalid_signature` when the signature does not match.",
        response=StatusTaken,
        auth=(),
        errors=(403, 413),
        tag="providers",
    )
    async def status(self, request: Request) -> Response:
        try:
            form = await _form(request)
        except ApiError:
            self._feedback.refused("twilio", "malformed")
            raise
        url = self._url + (f"?{request.url.query}" if request.url.query else "")
        signature = request.headers.get(SIGNATURE_HEADER, "")
        # The auth token's HMAC-SHA1, pinned: the library's settings header is not read.
        if not signature or not self._validator.validate(url, form, signature):
            log.warning("twilio_callback_refused", reason="signature")
            self._feedback.refused("twilio", "signature")
            raise ApiError(403, "invalid_signature", f"{SIGNATURE_HEADER} does not match")
        sid, state = form.first("MessageSid"), form.first("MessageStatus")
        final = _FINAL.get(state)
        if not sid or final is None:
            return _taken(Applied.UNCHANGED)
        code = form.first("ErrorCode") or None
        reason = None
        if final is DeliveryState.FAILED:
            reason = f"Twilio: {state}" + (f" (error {code})" if code else "")
        report = Report(
            status=final, provider_status=state, code=code, reason=reason, at=self._clock()
        )
        applied = await self._feedback.sms_status(sid, event_hash("twilio", sid, state), report)
        log.info("sms_status", status=state, code=code, outcome=applied.value)
        return _taken(applied)


def _taken(applied: Applied) -> Response:
    return JSONResponse(StatusTaken(outcome=applied).model_dump(mode="json"))


async def _form(request: Request) -> _Form:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise ApiError(413, "too_large", f"body exceeds {MAX_FORM} bytes")
    return _Form(parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True))
