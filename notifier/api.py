"""The notifier's HTTP API. Services use the API key; a user's own token opens that user's
preferences and inbox (so a browser page can use them directly)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from archmesh_client.channels import user_channel
from archmesh_client.notifications import (
    ID_PATTERN,
    BatchResult,
    Channel,
    ItemResult,
    NotificationRequest,
    validation_error,
)
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from notifier.analytics import MAX_RANGE
from notifier.events import inbox_event
from notifier.schemas import Preferences, PreferencesPatch, Template
from notifier.templates import TemplateInvalid
from shared.broker import BrokerError
from shared.http_api import (
    ApiError,
    bearer,
    error_response,
    is_api_key,
    json_body,
    require_api_key,
)
from shared.tokens import InvalidToken

if TYPE_CHECKING:
    from notifier.app import Notifier

MAX_BODY = 256 * 1024
_ID = re.compile(ID_PATTERN)
_TEMPLATE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,99}$")
Handler = Callable[[Request], Awaitable[Response]]


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
    def __init__(self, notifier: Notifier) -> None:
        self.n = notifier

    def routes(self) -> list[Route]:
        e = self._endpoint
        return [
            Route("/api/notifications", e(self.send), methods=["POST"]),
            Route("/api/notifications/batch", e(self.send_batch), methods=["POST"]),
            Route("/api/notifications/{id}", e(self.status), methods=["GET"]),
            Route("/api/users/{user_id}/preferences", e(self.preferences), methods=["GET"]),
            Route("/api/users/{user_id}/preferences", e(self.put_preferences), methods=["PUT"]),
            Route("/api/users/{user_id}/preferences", e(self.patch_preferences), methods=["PATCH"]),
            Route("/api/users/{user_id}/inbox", e(self.inbox), methods=["GET"]),
            Route("/api/users/{user_id}/inbox/read-all", e(self.read_all), methods=["POST"]),
            Route("/api/users/{user_id}/inbox/{id}/read", e(self.read_one), methods=["POST"]),
            Route("/api/templates/{name}", e(self.template), methods=["GET"]),
            Route("/api/templates/{name}", e(self.put_template), methods=["PUT"]),
            Route("/api/templates/{name}", e(self.delete_template), methods=["DELETE"]),
            Route("/api/analytics", e(self.analytics), methods=["GET"]),
            Route("/api/sessions/{session_id}", e(self.put_session), methods=["PUT"]),
            Route("/api/sessions/{session_id}", e(self.delete_session), methods=["DELETE"]),
        ]

    def _endpoint(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return exc.response
            except BrokerError as exc:
                return error_response(503, "unavailable", str(exc))

        return endpoint

    # -- auth ------------------------------------------------------------------------------

    def _service(self, request: Request) -> None:
        require_api_key(request, self.n.settings.api_key)

    def _user(self, request: Request) -> str:
        """The path's user, if the caller is a service or that very user."""
        user_id = _path_id(request, "user_id")
        given = bearer(request)
        if is_api_key(given, self.n.settings.api_key):
            return user_id
        if given is None or self.n.verifier is None:
            raise ApiError(401, "unauthorized", "send the API key or the user's token as Bearer")
        try:
            claims = self.n.verifier.verify(given)
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
        await self.n.intake.enqueue([item])
        self.n.metrics.received.inc()
        return JSONResponse({"id": item.id, "status": "queued"}, status_code=202)

    async def send_batch(self, request: Request) -> Response:
        self._service(request)
        limit = self.n.settings.max_batch_items
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
                error = _error_of(exc.response)
                results.append(ItemResult(index=index, ok=False, error=error))
            else:
                accepted.append(item)
                results.append(ItemResult(index=index, ok=True, id=item.id))
        if accepted:
            await self.n.intake.enqueue(accepted)
            self.n.metrics.received.inc(len(accepted))
        return JSONResponse(BatchResult.of(results).model_dump(mode="json", exclude_none=True))

    async def _check(self, item: NotificationRequest) -> None:
        """Refuse now what the worker would dead-letter: unknown template or user."""
        if item.template is not None and await self.n.templates.get(item.template) is None:
            raise ApiError(422, "unknown_template", f"no template named {item.template!r}")
        if (
            self.n.settings.notifier_known_users_only
            and await self.n.preferences.get(item.user_id) is None
        ):
            raise ApiError(422, "unknown_user", f"user {item.user_id!r} has no preferences saved")

    async def status(self, request: Request) -> Response:
        self._service(request)
        found = await self.n.statuses.get(_path_id(request, "id"))
        if found is None:
            raise ApiError(404, "not_found", "no such notification (or it expired)")
        return JSONResponse(found.model_dump(mode="json"))

    # -- preferences -----------------------------------------------------------------------

    async def preferences(self, request: Request) -> Response:
        user_id = self._user(request)
        saved = await self.n.preferences.get(user_id)
        return _model(saved or Preferences())

    async def put_preferences(self, request: Request) -> Response:
        user_id = self._user(request)
        prefs = _parse(Preferences, await json_body(request, MAX_BODY))
        return _model(await self.n.preferences.put(user_id, prefs))

    async def patch_preferences(self, request: Request) -> Response:
        user_id = self._user(request)
        patch = _parse(PreferencesPatch, await json_body(request, MAX_BODY))
        try:
            return _model(await self.n.preferences.patch(user_id, patch))
        except ValidationError as exc:
            raise ApiError(422, **validation_error(exc)) from None

    # -- inbox -----------------------------------------------------------------------------

    async def inbox(self, request: Request) -> Response:
        user_id = self._user(request)
        limit = _int_param(request, "limit", 50, 1, 500)
        items, unread = await self.n.inbox.list(user_id, limit)
        return JSONResponse({"items": [i.model_dump(mode="json") for i in items], "unread": unread})

    async def read_one(self, request: Request) -> Response:
        user_id = self._user(request)
        found, unread = await self.n.inbox.mark_read(user_id, _path_id(request, "id"))
        if not found:
            raise ApiError(404, "not_found", "no such notification in this inbox")
        await self._push_unread(user_id, unread)
        return JSONResponse({"unread": unread})

    async def read_all(self, request: Request) -> Response:
        user_id = self._user(request)
        unread = await self.n.inbox.mark_all_read(user_id)
        await self._push_unread(user_id, unread)
        return JSONResponse({"unread": unread})

    async def _push_unread(self, user_id: str, unread: int) -> None:
        try:
            await self.n.publisher.publish(user_channel(user_id), inbox_event(unread))
        except BrokerError:
            self.n.metrics.push_failures.inc()  # the count is right in the store regardless

    # -- templates -------------------------------------------------------------------------

    async def template(self, request: Request) -> Response:
        self._service(request)
        found = await self.n.templates.get(_name(request))
        if found is None:
            raise ApiError(404, "not_found", "no such template")
        return _model(found)

    async def put_template(self, request: Request) -> Response:
        self._service(request)
        name = _name(request)
        template = _parse(Template, await json_body(request, MAX_BODY))
        try:
            await self.n.templates.put(name, template)
        except TemplateInvalid as exc:
            raise ApiError(422, "invalid_template", str(exc)) from None
        return JSONResponse({"name": name, "saved": True})

    async def delete_template(self, request: Request) -> Response:
        self._service(request)
        if not await self.n.templates.delete(_name(request)):
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
        if channel is not None and channel not in {c.value for c in Channel}:
            raise ApiError(422, "validation_error", "channel: one of in_app, email, push, sms")
        buckets = await self.n.analytics.query(start, end, kind, channel)
        return JSONResponse({"from": start.isoformat(), "to": end.isoformat(), "buckets": buckets})

    async def put_session(self, request: Request) -> Response:
        self._service(request)
        session_id = _path_id(request, "session_id")
        body = await json_body(request, 4096)
        owner = body.get("owner_id") if isinstance(body, dict) else None
        if not isinstance(owner, str) or not _ID.match(owner):
            raise ApiError(422, "validation_error", 'expected {"owner_id": "<user id>"}')
        await self.n.workflows.watch(session_id, owner)
        return JSONResponse({"session_id": session_id, "owner_id": owner})

    async def delete_session(self, request: Request) -> Response:
        self._service(request)
        await self.n.workflows.forget(_path_id(request, "session_id"))
        return Response(status_code=204)


def _error_of(response: JSONResponse) -> Any:
    return orjson.loads(bytes(response.body))["error"]


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
