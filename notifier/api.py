"""The notifier's HTTP API. Services use the API key; a user's own token opens that user's
preferences and inbox (so a browser page can use them directly). Refusals are `ApiError`s,
rendered by shared/http_errors.py."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from archmesh_client.channels import user_channel
from archmesh_client.notifications import (
    ID_PATTERN,
    BatchResult,
    ItemResult,
    Medium,
    NotificationRequest,
    validation_error,
)
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from notifier.analytics import MAX_RANGE
from notifier.events import inbox_event
from notifier.preferences import critical_switched_off
from notifier.schemas import Preferences, PreferencesPatch, Template
from notifier.templates import TemplateInvalid
from shared.broker import BrokerError
from shared.http_api import bearer, is_api_key, json_body, require_api_key
from shared.http_errors import ApiError
from shared.tokens import InvalidToken

if TYPE_CHECKING:
    from archmesh_client.publisher import Publisher

    from notifier.analytics import Analytics
    from notifier.cancellation import Canceller
    from notifier.erasure import Erasure
    from notifier.inbox import Inbox
    from notifier.intake import Intake
    from notifier.metrics import NotifierMetrics
    from notifier.preferences import PreferenceStore
    from notifier.settings import NotifierSettings
    from notifier.status import StatusStore
    from notifier.template_store import TemplateStore
    from notifier.workflow import WorkflowWatcher
    from shared.tokens import TokenVerifier


class NotifierParts(Protocol):
    """What the API works with: the notifier's stores and intake (`notifier.app.Notifier`)."""

    settings: NotifierSettings
    verifier: TokenVerifier | None
    metrics: NotifierMetrics
    intake: Intake
    preferences: PreferenceStore
    templates: TemplateStore
    statuses: StatusStore
    inbox: Inbox
    analytics: Analytics
    erasure: Erasure
    critical: frozenset[str]
    workflows: WorkflowWatcher
    publisher: Publisher
    canceller: Canceller
    clock: Callable[[], datetime]


MAX_BODY = 256 * 1024
_ID = re.compile(ID_PATTERN)
_TEMPLATE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,99}$")
Handler = Callable[[Request], Awaitable[Response]]


def _route(path: str, **handlers: Handler) -> Route:
    """One route per path, its handler chosen by method: a wrong method is then a 405 whose
    `Allow` names every method the path takes (a route per method would name only its own)."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return Route(path, endpoint, methods=list(handlers))


def _parse(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ApiError(422, **validation_error(exc)) from None


def _path_id(request: Request, name: str) -> str:
    value: str = request.path_params[name]
    if not _ID.match(value):
        raise ApiError(422, "validation_error", f"{name}: 1-128 of A-Z a-z 0-9 . _ @ | + = -")
    return value


class NotifierApi:
    def __init__(self, notifier: NotifierParts) -> None:
        self.notifier = notifier

    def routes(self) -> list[Route]:
        return [
            _route("/api/notifications", POST=self.send),
            _route("/api/notifications/batch", POST=self.send_batch),
            _route("/api/notifications/cancel", POST=self.cancel),
            _route("/api/notifications/{id}", GET=self.status),
            _route(
                "/api/users/{user_id}/preferences",
                GET=self.preferences,
                PUT=self.put_preferences,
                PATCH=self.patch_preferences,
            ),
            _route("/api/users/{user_id}", DELETE=self.erase_user),
            _route("/api/users/{user_id}/inbox", GET=self.inbox),
            _route("/api/users/{user_id}/inbox/read-all", POST=self.read_all),
            _route("/api/users/{user_id}/inbox/{id}/read", POST=self.read_one),
            _route(
                "/api/templates/{name}",
                GET=self.template,
                PUT=self.put_template,
                DELETE=self.delete_template,
            ),
            _route("/api/analytics", GET=self.analytics),
            _route("/api/sessions/{session_id}", PUT=self.put_session, DELETE=self.delete_session),
        ]

    # -- auth ------------------------------------------------------------------------------

    def _service(self, request: Request) -> None:
        require_api_key(request, self.notifier.settings.api_key)

    def _user(self, request: Request) -> str:
        """The path's user, if the caller is a service or that very user."""
        user_id = _path_id(request, "user_id")
        given = bearer(request)
        if is_api_key(given, self.notifier.settings.api_key):
            return user_id
        if given is None or self.notifier.verifier is None:
            raise ApiError(401, "unauthorized", "send the API key or the user's token as Bearer")
        try:
            claims = self.notifier.verifier.verify(given)
        except InvalidToken as exc:
            raise ApiError(401, "invalid_token", str(exc)) from None
        if claims.user_id != user_id:
            raise ApiError(403, "forbidden", "a user token opens only that user's resources")
        return user_id

    # -- notifications ---------------------------------------------------------------------

    async def send(self, request: Request) -> Response:
        self._service(request)
        item = _parse(NotificationRequest, await json_body(request, MAX_BODY))
        await self._check(item)
        await self.notifier.intake.enqueue([item])
        self.notifier.metrics.received.inc()
        return JSONResponse({"id": item.id, "status": "queued"}, status_code=202)

    async def send_batch(self, request: Request) -> Response:
        self._service(request)
        limit = self.notifier.settings.max_batch_items
        body = await json_body(request, MAX_BODY * 4)
        items = body.get("notifications") if isinstance(body, dict) else body
        if not isinstance(items, list) or not items:
            raise ApiError(422, "bad_request", 'expected {"notifications": [...]} (non-empty)')
        if len(items) > limit:
            raise ApiError(413, "too_many_items", f"at most {limit} notifications per batch")
        results: list[ItemResult] = []
        accepted: list[NotificationRequest] = []
        for index, raw in enumerate(items):
            try:
                item = _parse(NotificationRequest, raw)
                await self._check(item)
            except ApiError as exc:
                results.append(ItemResult(index=index, ok=False, error=exc.body()))
            else:
                accepted.append(item)
                results.append(ItemResult(index=index, ok=True, id=item.id))
        if accepted:
            await self.notifier.intake.enqueue(accepted)
            self.notifier.metrics.received.inc(len(accepted))
        return JSONResponse(BatchResult.of(results).model_dump(mode="json", exclude_none=True))

    async def _check(self, item: NotificationRequest) -> None:
        """Refuse now what the worker would dead-letter: unknown template or user."""
        if item.template is not None and await self.notifier.templates.get(item.template) is None:
            raise ApiError(422, "unknown_template", f"no template named {item.template!r}")
        if (
            self.notifier.settings.notifier_known_users_only
            and await self.notifier.preferences.get(item.user_id) is None
        ):
            raise ApiError(422, "unknown_user", f"user {item.user_id!r} has no preferences saved")

    async def cancel(self, request: Request) -> Response:
        """Cancel every step not yet sent of the notifications that carried `cancel_key`."""
        self._service(request)
        body = await json_body(request, 4096)
        key = body.get("cancel_key") if isinstance(body, dict) else None
        if not isinstance(key, str) or not _ID.match(key):
            raise ApiError(422, "validation_error", 'expected {"cancel_key": "<id>"}')
        result = await self.notifier.canceller.by_key(key, self.notifier.clock())
        return JSONResponse(result.model_dump())

    async def status(self, request: Request) -> Response:
        self._service(request)
        found = await self.notifier.statuses.get(_path_id(request, "id"))
        if found is None:
            raise ApiError(404, "not_found", "no such notification (or it expired)")
        return JSONResponse(found.model_dump(mode="json"))

    # -- preferences -----------------------------------------------------------------------

    async def preferences(self, request: Request) -> Response:
        user_id = self._user(request)
        saved = await self.notifier.preferences.get(user_id)
        return _model(saved or Preferences())

    async def put_preferences(self, request: Request) -> Response:
        user_id = self._user(request)
        prefs = _parse(Preferences, await json_body(request, MAX_BODY))
        self._refuse_critical_off(prefs.channels)
        return _model(await self.notifier.preferences.put(user_id, prefs))

    async def patch_preferences(self, request: Request) -> Response:
        user_id = self._user(request)
        patch = _parse(PreferencesPatch, await json_body(request, MAX_BODY))
        self._refuse_critical_off(patch.channels)
        try:
            return _model(await self.notifier.preferences.patch(user_id, patch))
        except ValidationError as exc:
            raise ApiError(422, **validation_error(exc)) from None

    def _refuse_critical_off(self, channels: dict[str, Any] | None) -> None:
        if fields := critical_switched_off(channels, self.notifier.critical):
            message = "critical notification types cannot be switched off: " + ", ".join(
                sorted({field["loc"][1] for field in fields})
            )
            raise ApiError(422, "critical_type", message, fields=fields)

    async def erase_user(self, request: Request) -> Response:
        """Erase what the notifier holds of the user (notifier/erasure.py); idempotent."""
        self._service(request)
        await self.notifier.erasure.erase(_path_id(request, "user_id"))
        return Response(status_code=204)

    # -- inbox -----------------------------------------------------------------------------

    async def inbox(self, request: Request) -> Response:
        user_id = self._user(request)
        limit = _int_param(request, "limit", 50, 1, 500)
        items, unread = await self.notifier.inbox.list(user_id, limit)
        return JSONResponse({"items": [i.model_dump(mode="json") for i in items], "unread": unread})

    async def read_one(self, request: Request) -> Response:
        user_id = self._user(request)
        found, unread = await self.notifier.inbox.mark_read(user_id, _path_id(request, "id"))
        if not found:
            raise ApiError(404, "not_found", "no such notification in this inbox")
        await self._push_unread(user_id, unread)
        return JSONResponse({"unread": unread})

    async def read_all(self, request: Request) -> Response:
        user_id = self._user(request)
        unread = await self.notifier.inbox.mark_all_read(user_id)
        await self._push_unread(user_id, unread)
        return JSONResponse({"unread": unread})

    async def _push_unread(self, user_id: str, unread: int) -> None:
        try:
            await self.notifier.publisher.publish(user_channel(user_id), inbox_event(unread))
        except BrokerError:
            self.notifier.metrics.push_failures.inc()  # the count is right in the store regardless

    # -- templates -------------------------------------------------------------------------

    async def template(self, request: Request) -> Response:
        self._service(request)
        found = await self.notifier.templates.get(_name(request))
        if found is None:
            raise ApiError(404, "not_found", "no such template")
        return _model(found)

    async def put_template(self, request: Request) -> Response:
        self._service(request)
        name = _name(request)
        template = _parse(Template, await json_body(request, MAX_BODY))
        try:
            await self.notifier.templates.put(name, template)
        except TemplateInvalid as exc:
            raise ApiError(422, "invalid_template", str(exc)) from None
        return JSONResponse({"name": name, "saved": True})

    async def delete_template(self, request: Request) -> Response:
        self._service(request)
        if not await self.notifier.templates.delete(_name(request)):
            raise ApiError(404, "not_found", "no such template")
        return Response(status_code=204)

    # -- analytics and workflow sessions -------------------------------------------------------

    async def analytics(self, request: Request) -> Response:
        self._service(request)
        end = _time_param(request, "to") or datetime.now(UTC)
        start = _time_param(request, "from") or end - timedelta(hours=24)
        if start >= end or end - start > MAX_RANGE:
            raise ApiError(422, "bad_range", f"need from < to, at most {MAX_RANGE.days} days apart")
        kind = request.query_params.get("type")
        channel = request.query_params.get("channel")
        if channel is not None and channel not in {c.value for c in Medium}:
            raise ApiError(422, "validation_error", "channel: one of in_app, email, push, sms")
        buckets = await self.notifier.analytics.query(start, end, kind, channel)
        return JSONResponse({"from": start.isoformat(), "to": end.isoformat(), "buckets": buckets})

    async def put_session(self, request: Request) -> Response:
        self._service(request)
        session_id = _path_id(request, "session_id")
        body = await json_body(request, 4096)
        owner = body.get("owner_id") if isinstance(body, dict) else None
        if not isinstance(owner, str) or not _ID.match(owner):
            raise ApiError(422, "validation_error", 'expected {"owner_id": "<user id>"}')
        await self.notifier.workflows.watch(session_id, owner)
        return JSONResponse({"session_id": session_id, "owner_id": owner})

    async def delete_session(self, request: Request) -> Response:
        self._service(request)
        await self.notifier.workflows.forget(_path_id(request, "session_id"))
        return Response(status_code=204)


def _model(model: BaseModel) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"))


def _name(request: Request) -> str:
    name: str = request.path_params["name"]
    if not _TEMPLATE_NAME.match(name):
        raise ApiError(422, "validation_error", "template name: lower-case a-z 0-9 _ . : -")
    return name


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(422, "validation_error", f"{name}: an integer from {low} to {high}")
    return int(raw)


def _time_param(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(422, "validation_error", f"{name}: an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
