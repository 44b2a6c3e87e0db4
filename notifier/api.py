"""The notifier's HTTP API. Services use the API key; a user's own token opens that user's
preferences and inbox (so a browser page can use them directly). Refusals are `ApiError`s,
rendered by shared/http_errors.py."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from archmesh_client.cancellation import CancelResult
from archmesh_client.notifications import (
    ID_PATTERN,
    BatchResult,
    ItemResult,
    Medium,
    NotificationRequest,
    validation_error,
)
from pydantic import BaseModel, Field, SkipValidation, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from notifier.analytics import MAX_RANGE
from notifier.api_models import (
    AnalyticsBucket,
    AnalyticsReport,
    CancelRequest,
    Marked,
    Queued,
    SessionOwner,
    SessionWatched,
    TemplateSaved,
)
from notifier.inbox import BadCursor, Filter, Inbox, Mark
from notifier.preferences import critical_switched_off
from notifier.schemas import (
    DeliveryStatus,
    InboxCounts,
    InboxItem,
    InboxPage,
    MarkIds,
    Preferences,
    PreferencesPatch,
    Template,
)
from notifier.templates import TemplateInvalid
from notifier.topics_api import TopicsApi
from shared.http_api import bearer, is_api_key, json_body, require_api_key
from shared.http_errors import ApiError
from shared.openapi import API_KEY, USER_TOKEN, Handler, Param, method_route, operation
from shared.tokens import InvalidToken

if TYPE_CHECKING:
    from collections.abc import Callable

    from archmesh_client.publisher import Publisher

    from notifier.analytics import Analytics
    from notifier.cancellation import Canceller
    from notifier.erasure import Erasure
    from notifier.intake import Intake
    from notifier.metrics import NotifierMetrics
    from notifier.preferences import PreferenceStore
    from notifier.settings import NotifierSettings
    from notifier.status import StatusStore
    from notifier.template_store import TemplateStore
    from notifier.topics import TopicStore
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
    topics: TopicStore


MAX_BODY = 256 * 1024
_ID = re.compile(ID_PATTERN)
_TEMPLATE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,99}$")
_ARCHIVED: dict[str, bool | None] = {"false": False, "true": True, "all": None}


# One route per path, its handler chosen by method (a 405's `Allow` names them all); each
# handler's `@operation` documents its method.
_route = method_route


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


_ID_TEXT = "1-128 of A-Z a-z 0-9 . _ @ | + = -"
_SEND: dict[str, Any] = {"errors": (422,), "tag": "notifications"}
# A user's resources open with the API key or that user's own token.
_USER: dict[str, Any] = {
    "auth": (API_KEY, USER_TOKEN),
    "errors": (403,),
    "path": {"user_id": _ID_TEXT},
    "tag": "users",
}
_TEMPLATE: dict[str, Any] = {"path": {"name": "lower-case a-z 0-9 _ . : -"}, "tag": "templates"}


class NotificationBatch(BaseModel):
    """`{"notifications": [...]}` (a bare JSON list is accepted too); each validated on its
    own, so one bad item never fails the others."""

    # SkipValidation: the schema of each item, checked one by one when accepted.
    notifications: list[SkipValidation[NotificationRequest]] = Field(min_length=1)


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
            *self._inbox_routes(),
            _route(
                "/api/templates/{name}",
                GET=self.template,
                PUT=self.put_template,
                DELETE=self.delete_template,
            ),
            _route("/api/analytics", GET=self.analytics),
            _route("/api/sessions/{session_id}", PUT=self.put_session, DELETE=self.delete_session),
            *TopicsApi(self.notifier, self._user, self._service).routes(),
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

    @operation(
        "Send a notification", body=NotificationRequest, response=Queued, status=202, **_SEND
    )
    async def send(self, request: Request) -> Response:
        self._service(request)
        item = _parse(NotificationRequest, await json_body(request, MAX_BODY))
        await self._check(item)
        await self.notifier.intake.enqueue([item])
        self.notifier.metrics.received.inc()
        return JSONResponse(Queued(id=item.id).model_dump(), status_code=202)

    @operation(
        "Send several notifications, each item answered on its own",
        body=NotificationBatch,
        response=BatchResult,
        tag="notifications",
    )
    async def send_batch(self, request: Request) -> Response:
        self._service(request)
        limit = self.notifier.settings.max_batch_items
        body = await json_body(request, MAX_BODY * 4)
        try:
            batch = NotificationBatch.model_validate(
                {"notifications": body} if isinstance(body, list) else body
            )
        except ValidationError:
            raise ApiError(
                422, "bad_request", 'expected {"notifications": [...]} (non-empty)'
            ) from None
        items: list[Any] = batch.notifications
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
            and item.user_id is not None  # a topic's subscribers are checked when they subscribe
            and await self.notifier.preferences.get(item.user_id) is None
        ):
            raise ApiError(422, "unknown_user", f"user {item.user_id!r} has no preferences saved")

    @operation(
        "Cancel every step not yet sent of the notifications that carried `cancel_key`",
        body=CancelRequest,
        response=CancelResult,
        tag="notifications",
    )
    async def cancel(self, request: Request) -> Response:
        self._service(request)
        asked = _parse(CancelRequest, await json_body(request, 4096))
        result = await self.notifier.canceller.by_key(asked.cancel_key, self.notifier.clock())
        return _model(result)

    @operation(
        "A notification's status per medium",
        response=DeliveryStatus,
        errors=(404,),
        path={"id": _ID_TEXT},
        tag="notifications",
    )
    async def status(self, request: Request) -> Response:
        self._service(request)
        found = await self.notifier.statuses.get(_path_id(request, "id"))
        if found is None:
            raise ApiError(404, "not_found", "no such notification (or it expired)")
        return JSONResponse(found.model_dump(mode="json"))

    # -- preferences -----------------------------------------------------------------------

    @operation("A user's preferences (defaults when none saved)", response=Preferences, **_USER)
    async def preferences(self, request: Request) -> Response:
        user_id = self._user(request)
        saved = await self.notifier.preferences.get(user_id)
        return _model(saved or Preferences())

    @operation("Replace a user's preferences", body=Preferences, response=Preferences, **_USER)
    async def put_preferences(self, request: Request) -> Response:
        user_id = self._user(request)
        prefs = _parse(Preferences, await json_body(request, MAX_BODY))
        self._refuse_critical_off(prefs.channels)
        return _model(await self.notifier.preferences.put(user_id, prefs))

    @operation(
        "Change some of a user's preferences",
        body=PreferencesPatch,
        response=Preferences,
        **_USER,
    )
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

    @operation(
        "Erase what the notifier holds of a user (idempotent)",
        status=204,
        errors=(422,),
        path={"user_id": _ID_TEXT},
        tag="users",
    )
    async def erase_user(self, request: Request) -> Response:
        """Erase what the notifier holds of the user (notifier/erasure.py); idempotent."""
        self._service(request)
        await self.notifier.erasure.erase(_path_id(request, "user_id"))
        return Response(status_code=204)

    # -- inbox -----------------------------------------------------------------------------

    def _inbox_routes(self) -> list[Route]:
        base = "/api/users/{user_id}/inbox"
        routes = [
            _route(base, GET=self.inbox),
            _route(f"{base}/read-all", POST=self._mark_many(Mark.READ, every=True)),
            _route(base + "/{id}", GET=self.inbox_item),
        ]
        for mark in Mark:
            routes.append(_route(f"{base}/{mark.value}", POST=self._mark_many(mark)))
            routes.append(_route(base + "/{id}/" + mark.value, POST=self._mark_one(mark)))
        return routes

    @operation(
        "A page of a user's in-app notifications, newest first, with the unseen and unread counts",
        response=InboxPage,
        query=(
            Param("limit", "at most this many items (1-500, default 50)", "integer"),
            Param("cursor", "the `next_cursor` of the previous page"),
            Param("type", "only this notification type (repeatable)"),
            Param("archived", "`false` (default), `true` or `all`"),
        ),
        **{**_USER, "errors": (403, 422)},
    )
    async def inbox(self, request: Request) -> Response:
        user_id = self._user(request)
        limit = _int_param(request, "limit", 50, 1, 500)
        archived = request.query_params.get("archived", "false")
        if archived not in _ARCHIVED:
            raise ApiError(422, "validation_error", "archived: true, false or all")
        types = request.query_params.getlist("type")
        if any(not _TEMPLATE_NAME.match(t) for t in types):
            raise ApiError(422, "validation_error", "type: a notification type")
        where = Filter(archived=_ARCHIVED[archived], types=frozenset(types))
        try:
            page = await self.notifier.inbox.page(
                user_id, limit, request.query_params.get("cursor"), where
            )
        except BadCursor as exc:
            raise ApiError(422, "bad_cursor", str(exc)) from None
        return _model(page)

    @operation(
        "One in-app notification with its marks",
        response=InboxItem,
        **{**_USER, "errors": (403, 404, 422), "path": {**_USER["path"], "id": _ID_TEXT}},
    )
    async def inbox_item(self, request: Request) -> Response:
        user_id = self._user(request)
        found = await self.notifier.inbox.item(user_id, _path_id(request, "id"))
        if found is None:
            raise ApiError(404, "not_found", "no such notification in this inbox")
        return _model(found)

    async def _read(self, user_id: str, ids: list[str]) -> None:
        """Items just read need no more escalation: their waiting steps are cancelled now (a
        step that comes due also checks, so one read a moment after this still stops it)."""
        await self.notifier.canceller.after_read(ids, self.notifier.clock(), user_id)

    def _mark_one(self, mark: Mark) -> Handler:
        @operation(
            f"Mark one in-app notification {mark.value}",
            response=InboxCounts,
            **{**_USER, "errors": (403, 404, 422), "path": {**_USER["path"], "id": _ID_TEXT}},
        )
        async def handler(request: Request) -> Response:
            user_id = self._user(request)
            item_id = _path_id(request, "id")
            marked = await self.notifier.inbox.mark(user_id, mark, [item_id])
            if marked.unknown:
                raise ApiError(404, "not_found", "no such notification in this inbox")
            if mark in (Mark.READ, Mark.ARCHIVE):
                await self._read(user_id, [item_id])
            return _model(marked.counts)

        return handler

    def _mark_many(self, mark: Mark, every: bool = False) -> Handler:
        @operation(
            f"Mark every in-app notification {mark.value}"
            if every
            else f"Mark in-app notifications {mark.value}: these ids, or all",
            body=None if every else MarkIds,
            response=Marked,
            **_USER,
        )
        async def handler(request: Request) -> Response:
            user_id = self._user(request)
            if every:
                chosen = MarkIds(all=True)
            else:
                chosen = _parse(MarkIds, await json_body(request, 64 * 1024))
            ids = list(dict.fromkeys(chosen.ids))
            reading = mark in (Mark.READ, Mark.ARCHIVE)
            if reading and chosen.all:
                ids = await self.notifier.inbox.unread(user_id)  # the ones this reads
            marked = await self.notifier.inbox.mark(user_id, mark, ids, every=chosen.all)
            if reading:
                await self._read(user_id, [i for i in ids if i not in marked.unknown])
            counts = marked.counts
            return _model(
                Marked(unseen=counts.unseen, unread=counts.unread, unknown=marked.unknown)
            )

        return handler

    # -- templates -------------------------------------------------------------------------

    @operation("A template", response=Template, errors=(404, 422), **_TEMPLATE)
    async def template(self, request: Request) -> Response:
        self._service(request)
        found = await self.notifier.templates.get(_name(request))
        if found is None:
            raise ApiError(404, "not_found", "no such template")
        return _model(found)

    @operation(
        "Save a template (checked: it must render)",
        body=Template,
        response=TemplateSaved,
        **_TEMPLATE,
    )
    async def put_template(self, request: Request) -> Response:
        self._service(request)
        name = _name(request)
        template = _parse(Template, await json_body(request, MAX_BODY))
        try:
            await self.notifier.templates.put(name, template)
        except TemplateInvalid as exc:
            raise ApiError(422, "invalid_template", str(exc)) from None
        return _model(TemplateSaved(name=name))

    @operation("Delete a template", status=204, errors=(404, 422), **_TEMPLATE)
    async def delete_template(self, request: Request) -> Response:
        self._service(request)
        if not await self.notifier.templates.delete(_name(request)):
            raise ApiError(404, "not_found", "no such template")
        return Response(status_code=204)

    # -- analytics and workflow sessions -------------------------------------------------------

    @operation(
        "Delivery counts by hour, type, medium and status",
        response=AnalyticsReport,
        errors=(422,),
        query=(
            Param("from", "ISO 8601 start (default: 24 hours before `to`)"),
            Param("to", "ISO 8601 end (default: now)"),
            Param("type", "only this notification type"),
            Param("channel", "only this medium: in_app, email, push or sms"),
        ),
        tag="analytics",
    )
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
        report = AnalyticsReport(
            from_=start.isoformat(),
            to=end.isoformat(),
            buckets=[AnalyticsBucket.model_validate(b) for b in buckets],
        )
        return JSONResponse(report.model_dump(by_alias=True, exclude_none=True))

    @operation(
        "Tell the notifier who owns a workflow session",
        body=SessionOwner,
        response=SessionWatched,
        path={"session_id": _ID_TEXT},
        tag="workflows",
    )
    async def put_session(self, request: Request) -> Response:
        self._service(request)
        session_id = _path_id(request, "session_id")
        try:
            owner = SessionOwner.model_validate(await json_body(request, 4096)).owner_id
        except ValidationError:
            raise ApiError(422, "validation_error", 'expected {"owner_id": "<user id>"}') from None
        await self.notifier.workflows.watch(session_id, owner)
        return _model(SessionWatched(session_id=session_id, owner_id=owner))

    @operation(
        "Forget a workflow session's owner",
        status=204,
        errors=(422,),
        path={"session_id": _ID_TEXT},
        tag="workflows",
    )
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
