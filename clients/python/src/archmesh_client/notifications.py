"""What a backend sends the notifiers: the request schema, per-item results, and where the
notifiers read requests (a Redis Stream). The notifier's HTTP API and its queue consumer
validate with these same models, so a request this client accepts is one the service accepts.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Ids travel in channel names and Redis keys: the channel id alphabet, nothing that escapes.
ID_PATTERN = r"^[A-Za-z0-9._@|+=-]{1,128}$"
# A notification type (also a template name): lower case, e.g. `workflow_review_required`.
TYPE_PATTERN = r"^[a-z0-9][a-z0-9_.:-]{0,99}$"

Id = Annotated[str, Field(pattern=ID_PATTERN)]
# A topic (`project:42`): the id alphabet plus `:`, without `|` (it separates a fanned-out
# request's id from its user's) and without braces (they hash-tag the topic's Redis keys).
TOPIC_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}$"
TopicName = Annotated[str, Field(pattern=TOPIC_PATTERN)]
MAX_EXCLUDED = 100
# A BCP 47 language tag, loosely: a 2-3 letter language, then subtags (`pt-BR`, `zh-Hant-TW`).
LOCALE_PATTERN = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,4}$"


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class Medium(StrEnum):
    """How a notification reaches a person (the requests' and preferences' `channels` field on
    the wire). Not a pub/sub channel: in-app delivery publishes to the `user:` channel."""

    IN_APP = "in_app"
    EMAIL = "email"
    PUSH = "push"
    SMS = "sms"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


MAX_ACTIONS = 3
ACTION_ID_PATTERN = r"^[a-z0-9][a-z0-9_.:-]{0,63}$"


class Action(_Strict):
    """A button on the in-app item: `url` is https (absolute) or a path on the page's own
    origin (`/...`); nothing a link could run (`javascript:`, `data:`) or send elsewhere
    unencrypted."""

    id: str = Field(pattern=ACTION_ID_PATTERN)
    label: str = Field(min_length=1, max_length=60)
    url: str = Field(min_length=1, max_length=2000)

    @field_validator("label")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.strip() or not value.isprintable():
            raise ValueError("label: printable text, not blank")
        return value

    @field_validator("url")
    @classmethod
    def _safe_url(cls, value: str) -> str:
        if not value.isprintable() or any(c.isspace() or c == "\\" for c in value):
            raise ValueError("url: no spaces, backslashes or control characters")
        relative = value.startswith("/") and not value.startswith("//")
        absolute = value.lower().startswith("https://") and len(value) > len("https://")
        if not (relative or absolute):
            raise ValueError("url: https://... or a path starting with /")
        return value


def new_notification_id() -> str:
    return uuid.uuid4().hex


class NotificationRequest(_Strict):
    """What a backend asks for. `id` is the idempotency key: the same id is processed once.

    For one user (`user_id`) or for every subscriber of a `topic` but the `exclude`d (the
    actor, say): the notifier fans a topic request out into one request per subscriber."""

    id: Id = Field(default_factory=new_notification_id)
    user_id: Id | None = None
    topic: TopicName | None = Field(None, description="every subscriber, instead of user_id")
    exclude: list[Id] = Field(
        default_factory=list,
        max_length=MAX_EXCLUDED,
        description="subscribers a topic request skips (e.g. the actor)",
    )
    type: str = Field(pattern=TYPE_PATTERN, description="e.g. workflow_review_required")
    title: str | None = Field(None, min_length=1, max_length=200)
    body: str | None = Field(None, max_length=5000)
    template: str | None = Field(None, pattern=TYPE_PATTERN)
    data: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = Priority.NORMAL
    channels: list[Medium] | None = Field(None, min_length=1)
    locale: str | None = Field(
        None, pattern=LOCALE_PATTERN, description="e.g. pt-BR; overrides the user's locale"
    )
    actions: list[Action] = Field(default_factory=list, max_length=MAX_ACTIONS)

    @field_validator("actions")
    @classmethod
    def _distinct_actions(cls, value: list[Action]) -> list[Action]:
        if len({a.id for a in value}) != len(value):
            raise ValueError("action ids must not repeat")
        return value

    escalation: str | None = Field(
        None,
        max_length=200,
        description="steps, e.g. `in_app;email@unseen:10m;sms@unread:30m` (replaces the type's)",
    )
    digest_key: Id | None = Field(None, description="separate digests of one type per key")
    throttle_key: Id | None = Field(None, description="separate throttles of one type per key")
    cancel_key: Id | None = Field(None, description="POST /api/notifications/cancel takes it")

    @field_validator("escalation")
    @classmethod
    def _steps(cls, value: str | None) -> str | None:
        if value is not None:
            parse_escalation(value)  # raises ValueError with the reason
        return value

    @field_validator("channels")
    @classmethod
    def _unique(cls, value: list[Medium] | None) -> list[Medium] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("channels must not repeat")
        return value

    @model_validator(mode="after")
    def _content(self) -> NotificationRequest:
        if self.template is None and self.title is None:
            raise ValueError("give a title (and body), or a template")
        if (self.user_id is None) == (self.topic is None):
            raise ValueError("give exactly one of user_id and topic")
        if self.topic is None and self.exclude:
            raise ValueError("exclude goes with a topic")
        if self.topic is not None and "|" in self.id:
            raise ValueError("a topic request's id has no | (its subscribers' ids add one)")
        return self

    @property
    def recipient(self) -> str:
        """The user of a per-user request (a topic request has none until it is fanned out)."""
        if self.user_id is None:
            raise ValueError(f"request {self.id} is for topic {self.topic!r}, not one user")
        return self.user_id


_DURATION = re.compile(r"^(\d{1,9})(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_STEP = re.compile(r"^([a-z_]+)(?:@(unseen|unread):(\w+))?$")


def parse_duration(text: str) -> float:
    """`500ms`, `30s`, `10m`, `2h`, `1d` in seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 30s, 10m, 2h")
    return int(match[1]) * _UNITS[match[2]]


@dataclass(frozen=True, slots=True)
class EscalationStep:
    """Send on `medium` `after` seconds from the notification, unless it is `unless` by then
    ("seen" or "read" in the inbox); the first steps (no condition) go at once."""

    medium: Medium
    after: float = 0.0
    unless: str | None = None


def parse_escalation(text: str) -> tuple[EscalationStep, ...]:
    """`in_app;email@unseen:10m;sms@unread:30m`: in-app at once, then email if the item is still
    unseen 10 minutes after it was created, then SMS if it is still unread after 30 minutes."""
    steps: list[EscalationStep] = []
    for raw in text.split(";"):
        match = _STEP.match(raw.strip())
        if match is None or match[1] not in {m.value for m in Medium}:
            raise ValueError(f"{raw.strip()!r}: a step is medium or medium@unseen|unread:delay")
        medium = Medium(match[1])
        if match[2] is None:
            if any(s.unless for s in steps):
                raise ValueError(f"{medium.value}: steps without a condition come first")
            steps.append(EscalationStep(medium))
            continue
        after = parse_duration(match[3])
        if after <= 0 or (steps and after < steps[-1].after):
            raise ValueError(f"{raw.strip()!r}: delays must be positive and never decrease")
        unless = "seen" if match[2] == "unseen" else "read"
        steps.append(EscalationStep(medium, after, unless))
    media = [s.medium for s in steps]
    if len(set(media)) != len(media):
        raise ValueError("a medium appears in one step only")
    if Medium.IN_APP not in media or steps[media.index(Medium.IN_APP)].unless is not None:
        raise ValueError("in_app must be one of the first steps (seen and read are in-app)")
    return tuple(steps)


class ItemResult(BaseModel):
    index: int
    ok: bool
    id: str | None = None
    error: dict[str, Any] | None = None


class BatchResult(BaseModel):
    """One bad item never fails the others: each has its own result."""

    total: int
    successful: int
    failed: int
    results: list[ItemResult]

    @classmethod
    def of(cls, results: list[ItemResult]) -> BatchResult:
        good = sum(1 for r in results if r.ok)
        return cls(total=len(results), successful=good, failed=len(results) - good, results=results)


# The Redis Stream the notifiers read: `XADD nt:requests * request <NotificationRequest JSON>`.
REQUEST_STREAM = "nt:requests"
REQUEST_FIELD = "request"


def validation_error(exc: Exception) -> dict[str, Any]:
    """A JSON-able error body for a refused request, field by field for pydantic errors."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        fields = [
            {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        return {"code": "validation_error", "message": "invalid notification", "fields": fields}
    return {"code": "validation_error", "message": str(exc)}
