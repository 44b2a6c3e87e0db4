"""The topic routes: a user's subscriptions (API key, or that user's own token) and a topic's
subscribers (API key). Sending to a topic is `POST /api/notifications` with `topic`."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from archmesh_client.notifications import ID_PATTERN, TOPIC_PATTERN
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from notifier.topics import TooManyTopics, UserErased
from shared.http_errors import ApiError
from shared.openapi import API_KEY, USER_TOKEN, Param, method_route, operation

if TYPE_CHECKING:
    from notifier.preferences import PreferenceStore
    from notifier.settings import NotifierSettings
    from notifier.topics import TopicStore

_TOPIC = re.compile(TOPIC_PATTERN)
_ID = re.compile(ID_PATTERN)
_TOPIC_TEXT = "1-128 of A-Z a-z 0-9 . _ : @ + = - (e.g. project:42)"
_ID_TEXT = "1-128 of A-Z a-z 0-9 . _ @ | + = -"
_USER: dict[str, Any] = {
    "auth": (API_KEY, USER_TOKEN),
    "errors": (403, 422),
    "tag": "topics",
}
_ONE = {**_USER, "path": {"user_id": _ID_TEXT, "topic": _TOPIC_TEXT}}


class TopicParts(Protocol):
    settings: NotifierSettings
    topics: TopicStore
    preferences: PreferenceStore


class UserTopics(BaseModel):
    user_id: str
    topics: list[str]


class Subscription(BaseModel):
    """The user's subscription to the topic after the call; `changed`: whether it did."""

    user_id: str
    topic: str
    subscribed: bool
    changed: bool


class SubscriberPage(BaseModel):
    """Subscribers in user id order; pass `next_cursor` back for the next page (null: done)."""

    topic: str
    users: list[str]
    next_cursor: str | None


class TopicsApi:
    def __init__(
        self,
        notifier: TopicParts,
        user: Callable[[Request], str],
        service: Callable[[Request], None],
    ) -> None:
        """`user(request)`: the path's user if the caller may act for them (else ApiError);
        `service(request)`: ApiError unless the caller holds the API key."""
        self._notifier = notifier
        self._user = user
        self._service = service

    def routes(self) -> list[Route]:
        return [
            method_route("/api/users/{user_id}/topics", GET=self.user_topics),
            method_route(
                "/api/users/{user_id}/topics/{topic}", PUT=self.subscribe, DELETE=self.unsubscribe
            ),
            method_route("/api/topics/{topic}/subscribers", GET=self.subscribers),
        ]

    @operation(
        "The topics a user subscribes to",
        response=UserTopics,
        **{**_USER, "path": {"user_id": _ID_TEXT}},
    )
    async def user_topics(self, request: Request) -> Response:
        user_id = self._user(request)
        found = await self._notifier.topics.of_user(user_id)
        return _json(UserTopics(user_id=user_id, topics=found))

    @operation(
        "Subscribe a user to a topic (idempotent): requests to the topic reach them",
        description="409 `user_erased` while the user is being erased (and minutes after).",
        response=Subscription,
        **{**_ONE, "errors": (403, 409, 422)},
    )
    async def subscribe(self, request: Request) -> Response:
        user_id = self._user(request)
        topic = _topic(request)
        settings = self._notifier.settings
        if (
            settings.notifier_known_users_only
            and await self._notifier.preferences.get(user_id) is None
        ):
            raise ApiError(422, "unknown_user", f"user {user_id!r} has no preferences saved")
        try:
            new = await self._notifier.topics.subscribe(
                user_id, topic, settings.notifier_max_topics
            )
        except TooManyTopics as exc:
            raise ApiError(422, "too_many_topics", str(exc)) from None
        except UserErased as exc:
            raise ApiError(409, "user_erased", str(exc)) from None
        return _json(Subscription(user_id=user_id, topic=topic, subscribed=True, changed=new))

    @operation("Unsubscribe a user from a topic (idempotent)", response=Subscription, **_ONE)
    async def unsubscribe(self, request: Request) -> Response:
        user_id = self._user(request)
        topic = _topic(request)
        gone = await self._notifier.topics.unsubscribe(user_id, topic)
        return _json(Subscription(user_id=user_id, topic=topic, subscribed=False, changed=gone))

    @operation(
        "A page of a topic's subscribers, in user id order",
        response=SubscriberPage,
        errors=(422,),
        path={"topic": _TOPIC_TEXT},
        query=(
            Param("limit", "at most this many users (1-1000, default 500)", "integer"),
            Param("cursor", "the `next_cursor` of the previous page"),
        ),
        tag="topics",
    )
    async def subscribers(self, request: Request) -> Response:
        self._service(request)
        topic = _topic(request)
        raw = request.query_params.get("limit", "500")
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            raise ApiError(422, "validation_error", "limit: an integer from 1 to 1000")
        cursor = request.query_params.get("cursor") or None
        if cursor is not None and not _ID.match(cursor):
            raise ApiError(422, "bad_cursor", "cursor: the next_cursor of a previous page")
        found = await self._notifier.topics.subscribers(topic, cursor, int(raw))
        return _json(SubscriberPage(topic=topic, users=found.users, next_cursor=found.next_cursor))


def _topic(request: Request) -> str:
    topic: str = request.path_params["topic"]
    if not _TOPIC.match(topic):
        raise ApiError(422, "validation_error", f"topic: {_TOPIC_TEXT}")
    return topic


def _json(model: BaseModel) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"))
