"""The answers of the notifier's operations API (`/api/ops/*`, notifier/ops_api.py) as
pydantic models: the API builds its answers with them and shared/openapi.py documents them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from notifier.schemas import DeliveryStatus


class Consumer(BaseModel):
    name: str
    pending: int
    idle: int  # ms since it last read


class PendingEntry(BaseModel):
    entry: str
    consumer: str
    idle_ms: int
    deliveries: int


class Partition(BaseModel):
    """One partition's request stream and its consumer group: `lag` entries not yet read,
    `pending` read and not acknowledged."""

    partition: int
    stream: str
    group: str
    length: int
    lag: int
    pending: int
    consumers: list[Consumer]
    oldest_pending: list[PendingEntry]


class Queue(BaseModel):
    partitions: list[Partition]
    dead_letters: int
    scheduled: int  # jobs in the due set: held, retrying, waiting escalation steps, digests


class DeadLetter(BaseModel):
    id: str
    partition: int  # its stream's (requeue and discard name it)
    request: Any  # the request's JSON (or its text, when it was not JSON)
    reason: str
    entry: str | None  # the intake entry it came from
    failed_at: int | None  # unix ms


class DeadLetters(BaseModel):
    """A page, oldest first; `next` is the `after` of the next page (None on the last)."""

    total: int
    items: list[DeadLetter]
    next: str | None


class Requeued(BaseModel):
    id: str
    requeued: bool = True
    entry: str  # the new intake entry


class Discarded(BaseModel):
    id: str
    discarded: bool = True


class RequeuedAll(BaseModel):
    requeued: int


class DiscardedAll(BaseModel):
    discarded: int


class TimelineEvent(BaseModel):
    at: str | None
    medium: str
    status: str | None
    attempts: int | None
    reason: str | None
    next_attempt_at: str | None


class Timeline(BaseModel):
    """Every status change of every medium of one notification, oldest first, and its
    current status (None once that expired)."""

    id: str
    status: DeliveryStatus | None
    events: list[TimelineEvent]
