"""The notifier's own schemas: preferences, templates, delivery status, inbox items.

What a backend sends (NotificationRequest, BatchResult, the request stream) is the client
package's `archmesh_client.notifications`; only the notifier speaks these.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from archmesh_client.notifications import ID_PATTERN, TYPE_PATTERN, Action, Medium, Priority
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from notifier import locales

_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_PHONE = re.compile(r"^\+[1-9]\d{6,14}$")
_EMAIL = re.compile(r"^[^@\s<>\"]{1,64}@[^@\s<>\"]{1,255}\.[^@\s<>\"]+$")


class DeliveryState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    RETRYING = "retrying"
    HELD = "held"
    SUPPRESSED = "suppressed"
    WAITING = "waiting"  # a later escalation step, sent unless the item is seen/read by then
    DIGESTED = "digested"  # collected into a digest: its content goes out in that one message
    CANCELLED = "cancelled"  # by a cancel_key, or because the item was read before the step
    # What a provider reports after accepting a message (notifier/feedback_report.py).
    DELIVERED = "delivered"
    BOUNCED = "bounced"


TERMINAL_STATES = frozenset(
    {
        DeliveryState.SENT,
        DeliveryState.FAILED,
        DeliveryState.SUPPRESSED,
        DeliveryState.DIGESTED,
        DeliveryState.CANCELLED,
        DeliveryState.DELIVERED,
        DeliveryState.BOUNCED,
    }
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuietHours(_Strict):
    """A daily window in the user's time zone; `start` > `end` crosses midnight."""

    enabled: bool = True
    start: str = Field("22:00", description="HH:MM")
    end: str = Field("07:00", description="HH:MM")

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _TIME.match(value):
            raise ValueError("must be HH:MM (00:00-23:59)")
        return value


class PushKeys(_Strict):
    p256dh: str = Field(min_length=16, max_length=256, pattern=r"^[A-Za-z0-9_=-]+$")
    auth: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_=-]+$")


class PushSubscription(_Strict):
    """What the browser's PushManager.subscribe() returns (its JSON form)."""

    model_config = ConfigDict(extra="ignore")

    endpoint: str = Field(max_length=2048, pattern=r"^https://")  # push services are https
    keys: PushKeys


class Contacts(_Strict):
    email: str | None = None
    phone: str | None = Field(None, description="E.164, e.g. +14155550100")
    push_subscriptions: list[PushSubscription] = Field(default_factory=list, max_length=20)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.match(value):
            raise ValueError("not an email address")
        return value

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        if value is not None and not _PHONE.match(value):
            raise ValueError("must be an E.164 number such as +14155550100")
        return value


ChannelSwitches = dict[Medium, bool]


def _default_switches() -> dict[str, ChannelSwitches]:
    # SMS costs money and interrupts: users opt in to it.
    defaults = {Medium.IN_APP: True, Medium.EMAIL: True, Medium.PUSH: True, Medium.SMS: False}
    return {"default": defaults}


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones()) | {"UTC"}  # scanning the database takes ~20 ms


def _valid_timezone(value: str) -> str:
    # The list check refuses what ZoneInfo alone would load, such as file paths.
    if value not in _zones():
        raise ValueError("unknown IANA time zone")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("unknown IANA time zone") from None
    return value


def _valid_locale(value: str | None) -> str | None:
    return None if value is None else locales.canonical(value)


class Preferences(_Strict):
    """One user's choices. `channels` maps a notification type (or `default`) to switches."""

    timezone: str = "UTC"
    quiet_hours: QuietHours | None = None
    held: Literal["hold", "drop"] = Field("hold", description="external channels in quiet hours")
    channels: dict[str, ChannelSwitches] = Field(default_factory=_default_switches)
    contacts: Contacts = Field(default_factory=Contacts)
    locale: str | None = Field(None, description="BCP 47 tag, e.g. pt-BR: templates' language")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        return _valid_timezone(value)

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str | None) -> str | None:
        return _valid_locale(value)

    @field_validator("channels")
    @classmethod
    def _types(cls, value: dict[str, ChannelSwitches]) -> dict[str, ChannelSwitches]:
        for key in value:
            if key != "default" and not re.match(TYPE_PATTERN, key):
                raise ValueError(f"{key!r} is not a notification type")
        if len(value) > 100:
            raise ValueError("at most 100 notification types")
        return value

    def enabled(self, notification_type: str, channel: Medium) -> bool:
        for key in (notification_type, "default"):
            switches = self.channels.get(key, {})
            if channel in switches:
                return switches[channel]
        return _default_switches()["default"][channel]


class PreferencesPatch(_Strict):
    """A partial update: given fields replace, `channels` merges per type."""

    timezone: str | None = None
    quiet_hours: QuietHours | None = None
    held: Literal["hold", "drop"] | None = None
    channels: dict[str, ChannelSwitches] | None = None
    contacts: Contacts | None = None
    locale: str | None = None

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str | None) -> str | None:
        return value if value is None else _valid_timezone(value)

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str | None) -> str | None:
        return _valid_locale(value)

    @field_validator("timezone", "held", "channels", "contacts")
    @classmethod
    def _not_null(cls, value: object) -> object:
        # Only quiet_hours and locale may be cleared with null; absent fields are simply left alone.
        if value is None:
            raise ValueError("may be left out, but not null")
        return value


class EmailTemplate(_Strict):
    subject: str = Field(min_length=1, max_length=1000)
    text: str = Field(min_length=1, max_length=50000)
    html: str | None = Field(None, max_length=200000)


class PushTemplate(_Strict):
    title: str = Field(min_length=1, max_length=1000)
    body: str = Field("", max_length=4000)


class SmsTemplate(_Strict):
    text: str = Field(min_length=1, max_length=2000)


class InAppTemplate(_Strict):
    title: str = Field(min_length=1, max_length=1000)
    body: str = Field("", max_length=10000)


class TemplateChannels(_Strict):
    in_app: InAppTemplate | None = None
    email: EmailTemplate | None = None
    push: PushTemplate | None = None
    sms: SmsTemplate | None = None


class Template(_Strict):
    """Jinja2 sources per channel, rendered with the request's `data`, `title`, `body`.

    `channels` is the default; `locales` holds variants by language tag (`pt`, `pt-BR`), each
    with any of the channels: a channel a variant lacks falls back along the tag's chain."""

    channels: TemplateChannels
    locales: dict[str, TemplateChannels] = Field(default_factory=dict, max_length=50)

    @field_validator("locales")
    @classmethod
    def _tags(cls, value: dict[str, TemplateChannels]) -> dict[str, TemplateChannels]:
        canonical = {locales.canonical(tag): part for tag, part in value.items()}
        if len(canonical) != len(value):
            raise ValueError("a locale is given twice (tags are case-insensitive)")
        return canonical


class ChannelDelivery(BaseModel):
    status: DeliveryState
    attempts: int = 0
    updated_at: datetime
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    # The provider's own word after it accepted the message (a Twilio status such as
    # `undelivered`, or `hard_bounce`, `soft_bounce`, `complaint`) and its error code.
    provider_status: str | None = None
    provider_code: str | None = None


class DeliveryStatus(BaseModel):
    id: str
    user_id: str
    type: str
    priority: Priority
    created_at: datetime
    deliveries: dict[Medium, ChannelDelivery]


class ItemMarks(BaseModel):
    """Where one inbox item stands. Read implies seen; archived implies read."""

    seen: bool
    read: bool
    archived: bool


class InboxItem(BaseModel):
    """An in-app notification as its inbox keeps it (its id is the notification's id); the
    marks are kept in sets beside it and filled in when read back."""

    id: str
    type: str
    title: str
    body: str
    priority: Priority
    data: dict[str, Any]
    created_at: datetime
    actions: list[Action] = Field(default_factory=list)
    seen: bool = False
    read: bool = False
    archived: bool = False


class InboxCounts(BaseModel):
    unseen: int
    unread: int


class InboxPage(BaseModel):
    """`GET .../inbox`: one page, newest first; `next_cursor` is None on the last page."""

    items: list[InboxItem]
    next_cursor: str | None
    unseen: int
    unread: int


class MarkIds(_Strict):
    """The body of a bulk mark: these ids, or every item (`"all": true`)."""

    ids: list[Annotated[str, Field(pattern=ID_PATTERN)]] = Field(
        default_factory=list, max_length=500
    )
    all: bool = False

    @model_validator(mode="after")
    def _one_of(self) -> MarkIds:
        if self.all == bool(self.ids):
            raise ValueError('give "ids" (1 to 500) or "all": true')
        return self
