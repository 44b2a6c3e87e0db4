"""`POST /api/providers/email/events`: bounces and complaints from the email provider.

The provider (or a small adapter of the operator's, turning its own format into this one)
posts signed batches of events (notifier/feedback_signature.py). A hard bounce marks the
delivery `bounced` and suppresses the address; a soft bounce is noted on the delivery; a
complaint switches that type's email off for that user, as a one-click unsubscribe does; a
delivery receipt marks it `delivered`. Each event is applied once (by its `id`), however often
it is sent. A refused request is counted by reason (`archmesh_notifier_webhooks_refused_total`:
signature, stale, replayed, malformed)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal

from archmesh_client.notifications import ID_PATTERN, Medium, validation_error
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from notifier.feedback import Applied, event_hash
from notifier.feedback_report import Report, clean
from notifier.feedback_signature import HEADER, SignatureError, StaleSignature, verify
from notifier.schemas import DeliveryState, PreferencesPatch
from notifier.senders.email import NOTIFICATION_HEADER
from shared.http_errors import ApiError
from shared.logging import get_logger
from shared.openapi import method_route, operation

if TYPE_CHECKING:
    from notifier.feedback import ProviderFeedback
    from notifier.preferences import PreferenceStore

log = get_logger(__name__)

PATH = "/api/providers/email/events"
MAX_BODY = 512 * 1024
MAX_EVENTS = 500


class EmailEvent(BaseModel):
    """One event about one email the notifier sent."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200, description="the provider's event id")
    type: Literal["bounce", "complaint", "delivery"]
    bounce_type: Literal["hard", "soft"] | None = Field(None, description="bounces only")
    email: str = Field(
        max_length=320, pattern=r"^[^@\s]+@[^@\s]+$", description="the recipient's address"
    )
    notification_id: Annotated[str, Field(pattern=ID_PATTERN)] | None = Field(
        None, description=f"the email's `{NOTIFICATION_HEADER}` header"
    )
    message_id: str | None = Field(
        None, max_length=1000, description="the email's Message-ID, if the header is not at hand"
    )
    timestamp: datetime = Field(description="when the provider saw it (ISO 8601)")
    provider_message_id: str | None = Field(None, max_length=1000)
    reason: str | None = Field(None, max_length=10000, description="the provider's diagnostic")

    @model_validator(mode="after")
    def _bounce_type(self) -> EmailEvent:
        if (self.type == "bounce") != (self.bounce_type is not None):
            raise ValueError("bounce_type (hard or soft) is given with bounces, and only then")
        if self.timestamp.tzinfo is None:
            raise ValueError("timestamp needs a time zone (e.g. Z)")
        return self

    def notification(self) -> str | None:
        """Our notification id, from the header we set or our Message-ID `<id.email@host>`."""
        if self.notification_id:
            return self.notification_id
        local = (self.message_id or "").strip().strip("<>").rpartition("@")[0]
        return local.removesuffix(".email") if local.endswith(".email") else None


class EmailEvents(BaseModel):
    """A batch of events (a bare JSON list of events is taken too)."""

    model_config = ConfigDict(extra="forbid")

    events: list[EmailEvent] = Field(min_length=1, max_length=MAX_EVENTS)


class EventOutcome(BaseModel):
    id: str
    outcome: Applied


class EventsApplied(BaseModel):
    """What became of each event: `recorded`, `unchanged` (a later word is kept already),
    `unmatched` (no such delivery; a hard bounce still suppresses the address) or
    `duplicate` (applied before)."""

    results: list[EventOutcome]


class Refused(Exception):
    """A request refused before any event was applied: why (the metric's `reason`) and the
    answer."""

    def __init__(self, reason: str, error: ApiError) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class EmailEventsApi:
    def __init__(
        self,
        secret: bytes,
        tolerance: float,
        feedback: ProviderFeedback,
        preferences: PreferenceStore,
        critical: frozenset[str],
    ) -> None:
        self._secret = secret
        self._tolerance = tolerance
        self._feedback = feedback
        self._preferences = preferences
        self._critical = critical

    def routes(self) -> list[Route]:
        return [method_route(PATH, POST=self.events)]

    @operation(
        "Email bounces, complaints and delivery receipts from the provider (signed)",
        description=f"Signed with `{HEADER}: t=<unix>,v1=<hex HMAC-SHA256 of t.body>`. "
        "401 `invalid_signature`, 400 `stale_signature` (outside the tolerance), "
        "409 `replayed` (this signed request was taken already).",
        body=EmailEvents,
        response=EventsApplied,
        auth=(),
        errors=(400, 401, 409, 413, 422),
        tag="providers",
    )
    async def events(self, request: Request) -> Response:
        try:
            return await self._events(request)
        except Refused as refused:
            log.warning("email_events_refused", reason=refused.reason)
            self._feedback.refused("email", refused.reason)
            raise refused.error from None

    async def _events(self, request: Request) -> Response:
        try:
            body = await _read(request)
        except ApiError as exc:
            raise Refused("malformed", exc) from None
        try:
            signed = verify(
                self._secret, request.headers.get(HEADER, ""), body, time.time(), self._tolerance
            )
        except SignatureError as exc:
            raise Refused("signature", ApiError(401, "invalid_signature", str(exc))) from None
        except StaleSignature as exc:
            raise Refused("stale", ApiError(400, "stale_signature", str(exc))) from None
        try:
            batch = _parse(body)
        except ApiError as exc:
            raise Refused("malformed", exc) from None
        # Remembered past the tolerance on both sides of now: until no clock can take it.
        if not await self._feedback.take_signature(signed.signature, 2 * self._tolerance + 1):
            error = ApiError(409, "replayed", "this signed request was taken already")
            raise Refused("replayed", error)
        try:
            results = [EventOutcome(id=e.id, outcome=await self._apply(e)) for e in batch.events]
        except Exception:
            await self._feedback.release_signature(signed.signature)  # a resend may finish it
            raise
        answer = EventsApplied(results=results)
        return JSONResponse(answer.model_dump(mode="json"))

    async def _apply(self, event: EmailEvent) -> Applied:
        key = event_hash("email", event.id)
        notification = event.notification()
        reason = clean(event.reason, (event.email,))
        suppress = None
        if event.type == "delivery":
            report = Report(
                status=DeliveryState.DELIVERED, provider_status="delivered", at=event.timestamp
            )
        elif event.type == "bounce" and event.bounce_type == "hard":
            suppress = event.email
            report = Report(
                status=DeliveryState.BOUNCED,
                provider_status="hard_bounce",
                reason=f"hard bounce: {reason or 'no reason given'}",
                at=event.timestamp,
            )
        elif event.type == "bounce":
            text = f"soft bounce: {reason or 'no reason given'}"
            report = Report(provider_status="soft_bounce", reason=text, at=event.timestamp)
        else:
            done = "complaint: already applied"
            if not await self._feedback.applied(key):
                done = await self._complaint(notification)
            report = Report(provider_status="complaint", reason=done, at=event.timestamp)
        applied = await self._feedback.apply(key, notification, Medium.EMAIL, report, suppress)
        log.info("email_event", kind=event.type, bounce=event.bounce_type, outcome=applied.value)
        return applied

    async def _complaint(self, notification: str | None) -> str:
        """Switch the type's email off, as one-click unsubscribe does (idempotent, so done
        before the event is marked applied: a crash in between repeats only this); what was
        done, for the delivery's record."""
        meta = None if notification is None else await self._feedback.meta(notification)
        if meta is None or not meta["user_id"]:
            return "complaint: no such notification, or its user was erased"
        user_id, kind = meta["user_id"], meta["type"]
        if kind in self._critical:
            return "complaint: a critical type, its email stays on"
        if await self._preferences.get(user_id) is not None:
            patch = PreferencesPatch(channels={kind: {Medium.EMAIL: False}})
            await self._preferences.patch(user_id, patch)
        return "complaint: this type's email is now off for the user"


async def _read(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ApiError(413, "too_large", f"body exceeds {MAX_BODY} bytes")
    return bytes(body)


def _parse(body: bytes) -> EmailEvents:
    try:
        if body.lstrip().startswith(b"["):
            return EmailEvents.model_validate_json(b'{"events": ' + body + b"}")
        return EmailEvents.model_validate_json(body)
    except ValidationError as exc:
        if any(error["type"] == "json_invalid" for error in exc.errors()):
            raise ApiError(400, "bad_json", "the body is not JSON") from None
        raise ApiError(422, **validation_error(exc)) from None
