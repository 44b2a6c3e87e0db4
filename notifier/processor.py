"""Turns a batch of intake entries into recorded plans, in-app deliveries and due jobs.

A batch costs three Redis round trips whatever its size: one script reads (and locks), one
records every outcome and acknowledges every entry atomically, one pipeline pushes live."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from archmesh_client.channels import user_channel
from archmesh_client.notifications import Medium, NotificationRequest, validation_error
from pydantic import ValidationError

from notifier import keys, status
from notifier.events import notification_event
from notifier.intake import Entry
from notifier.ledger import Ledger, Outcome
from notifier.metrics import NotifierMetrics
from notifier.planner import Plan, plan
from notifier.schemas import DeliveryState, InboxCounts, Preferences, Template
from shared.broker import Broker, BrokerError
from shared.logging import get_logger

log = get_logger(__name__)

Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class Options:
    consumer: str
    lock_seconds: float
    retention: float
    known_users_only: bool
    configured: frozenset[Medium]
    critical: frozenset[str] = frozenset()  # types preferences and quiet hours cannot stop


@dataclass(slots=True)
class _Work:
    entry: Entry
    request: NotificationRequest
    plan: Plan | None = None
    counts: InboxCounts | None = None


class Processor:
    def __init__(
        self,
        ledger: Ledger,
        broker: Broker,
        metrics: NotifierMetrics,
        options: Options,
        clock: Clock,
        on_scheduled: Callable[[], None],
    ) -> None:
        self._ledger = ledger
        self._broker = broker
        self._metrics = metrics
        self._options = options
        self._clock = clock
        self._on_scheduled = on_scheduled

    async def process(self, entries: list[Entry]) -> None:
        work: list[_Work] = []
        dead: list[tuple[Entry, str]] = []
        for entry in entries:
            try:
                request = NotificationRequest.model_validate_json(entry.request_json)
            except ValidationError as exc:
                reason = orjson.dumps(validation_error(exc)["fields"]).decode()
                dead.append((entry, f"invalid request: {reason}"))
            else:
                work.append(_Work(entry, request))
        duplicates, work = await self._prepare(work, dead)
        await self._commit(work, duplicates, dead)
        await self._push(work)

    async def _prepare(
        self, work: list[_Work], dead: list[tuple[Entry, str]]
    ) -> tuple[list[Entry], list[_Work]]:
        """Lock, find duplicates, load preferences and templates, and plan each request."""
        if not work:
            return [], []
        names = sorted({w.request.template for w in work if w.request.template})
        found, raw_templates = await self._ledger.prepare(
            self._options.consumer,
            self._options.lock_seconds,
            [(w.request.id, w.request.user_id) for w in work],
            names,
        )
        templates = {
            name: None if raw is None else Template.model_validate_json(raw)
            for name, raw in raw_templates.items()
        }
        start = self._clock()
        duplicates: list[Entry] = []
        planned: list[_Work] = []
        for index, (item, facts) in enumerate(zip(work, found, strict=True)):
            # A microsecond apart, so the inbox orders one batch as it arrived.
            now = start + timedelta(microseconds=index)
            if facts.exists:
                duplicates.append(item.entry)  # processed before: acknowledge, do nothing
            elif not facts.locked:
                continue  # another replica holds it right now; left pending
            elif reason := self._refusal(item.request, facts.preferences, templates):
                dead.append((item.entry, reason))
            else:
                raw = facts.preferences
                prefs = Preferences() if raw is None else Preferences.model_validate_json(raw)
                template = templates.get(item.request.template or "")
                critical = item.request.type in self._options.critical
                configured = self._options.configured
                item.plan = plan(item.request, prefs, template, now, configured, critical=critical)
                planned.append(item)
        return duplicates, planned

    def _refusal(
        self, request: NotificationRequest, prefs: str | None, found: dict[str, Template | None]
    ) -> str | None:
        if request.template is not None and found.get(request.template) is None:
            return f"unknown template {request.template!r}"
        if prefs is None and self._options.known_users_only:
            return f"unknown user {request.user_id!r} (no preferences saved)"
        return None

    async def _commit(
        self, work: list[_Work], duplicates: list[Entry], dead: list[tuple[Entry, str]]
    ) -> None:
        outcome = Outcome(acks=[entry.id for entry in duplicates])
        now = self._clock()
        for item in work:
            self._stage(outcome, item, now)
        for entry, reason in dead:
            outcome.dead_letter(entry, reason)
            log.warning("request_dead_lettered", entry=entry.id, reason=reason[:300])
        if not outcome:
            return
        counts = iter(await self._ledger.commit(outcome))
        for item in work:
            if item.plan is not None and item.plan.inbox is not None:
                item.counts = next(counts)
        self._count(work, duplicates, dead)
        if any(item.plan and item.plan.due for item in work):
            self._on_scheduled()

    def _stage(self, outcome: Outcome, item: _Work, now: datetime) -> None:
        request, result = item.request, item.plan
        assert result is not None
        meta = {
            "id": request.id,
            "user_id": request.user_id,
            "type": request.type,
            "priority": request.priority.value,
            "created_at": now.isoformat(),
            "entry": item.entry.id,
        }
        due = {
            keys.due_member(request.id, channel.value): int(at.timestamp() * 1000)
            for channel, at in result.due.items()
        }
        inbox = None if result.inbox is None else (request.user_id, result.inbox)
        fields = status.fields_of(meta, result.deliveries, result.jobs)
        owner = (request.user_id, now)
        outcome.record(item.entry, request.id, fields, due, inbox, owner)
        for channel, delivery in result.deliveries.items():
            if delivery.status is not DeliveryState.PENDING:
                outcome.count(now, request.type, channel.value, delivery.status.value)

    def _count(self, work: list[_Work], duplicates: list[Entry], dead: list[Any]) -> None:
        m = self._metrics
        m.processed.labels("accepted").inc(len(work))
        m.processed.labels("duplicate").inc(len(duplicates))
        m.processed.labels("dead_letter").inc(len(dead))
        m.dead_letters.inc(len(dead))
        for item in work:
            assert item.plan is not None
            for channel, delivery in item.plan.deliveries.items():
                if delivery.status is not DeliveryState.PENDING:
                    m.deliveries.labels(channel.value, delivery.status.value).inc()

    async def _push(self, work: list[_Work]) -> None:
        """Live delivery of what is already in the inboxes, unless the commit published it
        (notifier/live.py); a failure here loses nothing."""
        if self._ledger.live is not None:
            return
        items = [
            (
                user_channel(w.request.user_id),
                notification_event(w.plan.inbox, w.counts.unseen, w.counts.unread),
            )
            for w in work
            if w.plan is not None and w.plan.inbox is not None and w.counts is not None
        ]
        if not items:
            return
        encoded = [(channel, orjson.dumps(event).decode()) for channel, event in items]
        try:
            await self._broker.publish_many(encoded)
        except BrokerError as exc:
            self._metrics.push_failures.inc(len(items))
            log.warning("live_push_failed", count=len(items), error=str(exc))
