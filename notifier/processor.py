"""Turns a batch of intake entries into recorded plans, in-app deliveries and due jobs.

A batch costs three Redis round trips whatever its size: one pipeline of reads, one MULTI
that records every outcome and acknowledges every entry together, then the live pushes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import ValidationError

from notifier import analytics, keys, status
from notifier.events import notification_event
from notifier.inbox import Inbox
from notifier.intake import Entry, stage_ack, stage_dead_letter
from notifier.metrics import NotifierMetrics
from notifier.planner import Plan, plan
from shared.broker import BrokerError
from shared.channels import user_channel
from shared.logging import get_logger
from shared.notifications import (
    Channel,
    DeliveryState,
    NotificationRequest,
    Preferences,
    Template,
    validation_error,
)
from shared.publisher import Publisher

log = get_logger(__name__)

Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class Options:
    consumer: str
    lock_seconds: float
    retention: float
    known_users_only: bool
    configured: frozenset[Channel]


@dataclass(slots=True)
class _Work:
    entry: Entry
    request: NotificationRequest
    plan: Plan | None = None
    inbox_reply: int = -1


class Processor:
    def __init__(
        self,
        redis: aioredis.Redis,
        inbox: Inbox,
        publisher: Publisher,
        metrics: NotifierMetrics,
        options: Options,
        clock: Clock,
        on_scheduled: Callable[[], None],
    ) -> None:
        self._redis = redis
        self._inbox = inbox
        self._publisher = publisher
        self._metrics = metrics
        self._options = options
        self._clock = clock
        self._on_scheduled = on_scheduled
        self._push_slots = asyncio.Semaphore(8)

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
        lock_ms = int(self._options.lock_seconds * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            for item in work:
                rid = item.request.id
                pipe.set(keys.lock(rid), self._options.consumer, nx=True, px=lock_ms)
                pipe.hexists(keys.notification(rid), "meta")
            for item in work:
                pipe.get(keys.preferences(item.request.user_id))
            names = sorted({w.request.template for w in work if w.request.template})
            for name in names:
                pipe.get(keys.template(name))
            replies = await pipe.execute()
        n = len(work)
        prefs_raw = replies[2 * n : 3 * n]
        found = dict(zip(names, replies[3 * n :], strict=True))
        templates = {
            name: None if raw is None else Template.model_validate_json(raw)
            for name, raw in found.items()
        }
        now = self._clock()
        duplicates: list[Entry] = []
        planned: list[_Work] = []
        for index, item in enumerate(work):
            locked, exists = replies[2 * index], replies[2 * index + 1]
            if exists:
                duplicates.append(item.entry)  # processed before: acknowledge, do nothing
            elif not locked:
                continue  # another replica holds it right now; left pending
            else:
                reason = self._refusal(item.request, prefs_raw[index], templates)
                if reason:
                    dead.append((item.entry, reason))
                    continue
                raw = prefs_raw[index]
                prefs = Preferences() if raw is None else Preferences.model_validate_json(raw)
                template = templates.get(item.request.template or "")
                item.plan = plan(item.request, prefs, template, now, self._options.configured)
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
        if not (work or duplicates or dead):
            return
        now = self._clock()
        async with self._redis.pipeline(transaction=True) as pipe:
            for item in work:
                await self._stage(pipe, item, now)
            for entry in duplicates:
                stage_ack(pipe, entry)
            for entry, reason in dead:
                stage_dead_letter(pipe, entry, reason)
                log.warning("request_dead_lettered", entry=entry.id, reason=reason[:300])
            replies = await pipe.execute()
        for item in work:
            if item.inbox_reply >= 0:
                item.inbox_reply = int(replies[item.inbox_reply])
        self._count(work, duplicates, dead)
        if any(item.plan and item.plan.due for item in work):
            self._on_scheduled()

    async def _stage(self, pipe: Any, item: _Work, now: datetime) -> None:
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
        status.stage_create(pipe, meta, result.deliveries, result.jobs, self._options.retention)
        for channel, due in result.due.items():
            member = keys.due_member(request.id, channel.value)
            pipe.zadd(keys.DUE, {member: int(due.timestamp() * 1000)})
        if result.inbox is not None:
            await self._inbox.stage_add(pipe, request.user_id, result.inbox)
            item.inbox_reply = len(pipe) - 1
        for channel, delivery in result.deliveries.items():
            if delivery.status is not DeliveryState.PENDING:
                analytics.count(pipe, now, request.type, channel.value, delivery.status.value)
        stage_ack(pipe, item.entry)
        pipe.delete(keys.lock(request.id))

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

    async def _bounded(self, publish: Awaitable[object]) -> object:
        async with self._push_slots:  # a batch must not open a connection per message
            return await publish

    async def _push(self, work: list[_Work]) -> None:
        """Live delivery of what is already in the inboxes; a failure here loses nothing."""
        pushes = [
            self._publisher.publish(
                user_channel(item.request.user_id),
                notification_event(item.plan.inbox, item.inbox_reply),
            )
            for item in work
            if item.plan is not None and item.plan.inbox is not None
        ]
        if not pushes:
            return
        results = await asyncio.gather(*map(self._bounded, pushes), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BrokerError | OSError)]
        if failures:
            self._metrics.push_failures.inc(len(failures))
            log.warning("live_push_failed", count=len(failures), error=str(failures[0]))
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, BrokerError | OSError):
                raise result
