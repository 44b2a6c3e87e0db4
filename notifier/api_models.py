"""The answers of the notifier's HTTP API that no store model already is, as pydantic models:
the API builds its answers with them and shared/openapi.py documents it from them."""

from __future__ import annotations

from typing import Literal

from archmesh_client.notifications import Id, Medium
from pydantic import BaseModel, ConfigDict, Field


class Queued(BaseModel):
    """Accepted: the request is stored and will be processed once (`id` is its idempotency
    key)."""

    id: str
    status: Literal["queued"] = "queued"


class Marked(BaseModel):
    """The counts after a bulk mark (also pushed live on the user's `user:` channel), and the
    ids that are not in the inbox."""

    unseen: int
    unread: int
    unknown: list[str]


class TemplateSaved(BaseModel):
    name: str
    saved: bool = True


class AnalyticsBucket(BaseModel):
    """One count; `reason` only on the few counted apart (`throttled` suppressions)."""

    hour: str
    type: str
    channel: str
    status: str
    count: int
    reason: str | None = None


class AnalyticsReport(BaseModel):
    """Counts by hour, type, medium and status; zero counts left out."""

    model_config = ConfigDict(populate_by_name=True)
    from_: str = Field(alias="from")
    to: str
    buckets: list[AnalyticsBucket]


class SessionOwner(BaseModel):
    """Who owns a workflow session: the workflow rules notify them."""

    owner_id: Id


class SessionWatched(BaseModel):
    session_id: str
    owner_id: str


class Unsubscribed(BaseModel):
    """A one-click unsubscribe done: this type's email is off for the link's user."""

    unsubscribed: Literal[True] = True
    type: str
    medium: Medium


class CancelRequest(BaseModel):
    """`POST /api/notifications/cancel`: the key the requests to cancel carried."""

    model_config = ConfigDict(extra="forbid")
    cancel_key: Id
