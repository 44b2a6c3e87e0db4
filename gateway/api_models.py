"""The bodies and answers of the gateway's HTTP API as pydantic models: the publish API
validates its items with `PublishItem` and builds its answers with the result models, and
shared/openapi.py documents the API from the same models."""

from __future__ import annotations

from typing import Any

from archmesh_client.control_commands import RevokeToken, RevokeUser
from pydantic import BaseModel, ConfigDict, Field, RootModel, SkipValidation


class PublishItem(BaseModel):
    """One publication. `idempotency_key` (or the `Idempotency-Key` header on a single
    publish) makes a retry answer the first publication's position instead of publishing
    again."""

    model_config = ConfigDict(extra="forbid")
    channel: str = Field(description="e.g. session:abc, user:alice, broadcast:news")
    data: Any = Field(None, description='the event: a JSON object with a string "type"')
    idempotency_key: str | None = Field(
        None, description="1-128 printable characters, no spaces, braces or quotes"
    )


class PublishBatch(BaseModel):
    """A batch: `{"items": [...]}` (a bare JSON list of items is accepted too). Each item is
    validated on its own: one bad item never fails the others."""

    # Validated one by one when published (SkipValidation keeps the schema, not the check).
    items: list[SkipValidation[PublishItem]] = Field(min_length=1)


class Published(BaseModel):
    """Where the publication landed; `duplicate` only when it carried an idempotency key."""

    channel: str
    offset: int
    epoch: str
    duplicate: bool | None = None


class BatchItem(BaseModel):
    """One item's result: its position when `ok`, its `error` object when not."""

    index: int
    ok: bool
    channel: str | None = None
    offset: int | None = None
    epoch: str | None = None
    duplicate: bool | None = None
    error: dict[str, Any] | None = None


class BatchPublished(BaseModel):
    total: int
    successful: int
    failed: int
    results: list[BatchItem]


class Revoke(RootModel[RevokeToken | RevokeUser]):
    """One token (`jti`, `exp` defaulting to the longest token lifetime from now) or a user's
    tokens issued before `before` (default now). `type` is given by the path, never in the
    body."""


class ControlSent(BaseModel):
    """The command's position on the control stream, which every node follows."""

    type: str
    offset: int
    epoch: str


class HistoryPublication(BaseModel):
    offset: int
    epoch: str
    data: Any


class HistoryPage(BaseModel):
    """A page of a channel's history and the channel's position (what a `history` frame
    answers)."""

    channel: str
    publications: list[HistoryPublication]
    offset: int
    epoch: str
