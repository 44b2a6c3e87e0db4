"""Turns a batch of intake entries into recorded plans, in-app deliveries and due jobs.

A batch costs three Redis round trips whatever its size: one script reads (and locks), one
records every outcome and acknowledges every entry atomically, one pipeline pushes live.

In three steps, so a partition's reader (notifier/worker.py) can plan one batch while Redis
records the one before: `read` (validate, prepare.lua), `plan` (planning and staging the
commit, no Redis) and `commit`. prepare.lua reads state the previous batch's commit writes
(its notifications and locks, its users' digest windows), so `read` given the batch still
in flight (`busy`) prepares only requests of other users and ids, and hands the rest back
to be read again once that commit is done: every decision is the one a strictly sequential
run would take, and one user's requests keep their order."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from archmesh_client.channels import user_channel
from archmesh_client.notifications import Medium, NotificationRequest, validation_error
from pydantic import ValidationError

from notifier import digests, keys, status, throttle
from notifier.events import notification_event
from notifier.intake import Entry
from notifier.ledger import Asked, Found, Ledger, Outcome, Staged
from notifier.metrics import NotifierMetrics
from notifier.planner import Plan, plan
from notifier.rules import Route, Rules
from notifier.schemas import DeliveryState, InboxCounts, Preferences, Template
from notifier.topics_fanout import TopicFanout
from shared.broker import Broker, BrokerError
from shared.logging import get_logger

log = get_logger(__name__)

Clock = Callable[[], datetime]


# Counted when they end (sent, failed, cancelled...), not when they are planned.
_UNFINISHED = frozenset({DeliveryState.PENDING, DeliveryState.WAITING})
_CANCELLABLE = frozenset(
    {DeliveryState.PENDING, DeliveryState.WAITING, DeliveryState.HELD, DeliveryState.DIGESTED}
)


_DEFAULTS = Preferences()
_PARSED_MAX = 4_096


def _open(result: Plan) -> bool:
    """Something of the plan may still be cancelled."""
    return any(d.status in _CANCELLABLE for d in result.deliveries.values())


@dataclass(frozen=True, slots=True)
class Options:
    consumer: str
    lock_seconds: float
    retention: float
    known_users_only: bool
    configured: frozenset[Medium]
    critical: frozenset[str] = frozenset()  # types preferences and quiet hours cannot stop
    rules: Rules = field(default_factory=Rules)


@dataclass(slots=True)
class Prepared:
    """A batch read and prepared (locked, its state read), not yet planned."""

    work: list[_Work]
    duplicates: list[Entry]
    dead: list[tuple[Entry, str]]
    fanned: list[Entry]

    @property
    def entries(self) -> list[Entry]:
        return [
            *self.duplicates,
            *self.fanned,
            *(entry for entry, _ in self.dead),
            *(item.entry for item in self.work),
        ]


@dataclass(slots=True)
class Batch:
    """A batch planned and its outcome staged and encoded: only its commit is left."""

    prepared: Prepared
    commit: Staged | None  # None: nothing to record
    users: frozenset[str]  # whose state its commit changes
    ids: frozenset[str]  # the notifications it records (and whose locks it releases)

    @property
    def entries(self) -> list[Entry]:
        return self.prepared.entries


_YIELD_EVERY = 32  # planning lets the loop send the commit in flight this often


@dataclass(slots=True)
class _Work:
    entry: Entry
    request: NotificationRequest
    plan: Plan | None = None
    counts: InboxCounts | None = None
    digest: dict[str, Any] | None = None  # the digest window spec, for a digest type's event
    route: Route = field(default_factory=Route)
    at: datetime | None = None  # when it was planned (a batch's are a microsecond apart)
    throttle_key: str | None = None  # its type's throttle log
    facts: Found | None = None  # what prepare.lua found
    template: Template | None = None

    @property
    def is_digest(self) -> bool:
        """The digest's own request (queued by its close): never digested or throttled again."""
        return self.entry.fields.get(keys.DIGEST_FIELD) == "1"


class Processor:
    def __init__(
        self,
        ledger: Ledger,
        broker: Broker,
        metrics: NotifierMetrics,
        options: Options,
        clock: Clock,
        on_scheduled: Callable[[], None],
        fanouts: TopicFanout | None = None,
    ) -> None:
        self._ledger = ledger
        self._fanouts = fanouts
        self._broker = broker
        self._metrics = metrics
        self._options = options
        self._clock = clock
        self._on_scheduled = on_scheduled
        # Saved preferences by their JSON text: many users save the same, and parsing one is
        # most of a request's planning. The planner only reads them; bounded, cleared whole.
        self._parsed: dict[str, Preferences] = {}

    async def process(self, entries: list[Entry]) -> None:
        """`entries`: of one partition, each of a user of that partition (worker.py)."""
        prepared, _ = await self.read(entries)
        await self.commit(await self.plan(prepared))

    async def read(
        self, entries: list[Entry], busy: Batch | None = None
    ) -> tuple[Prepared, list[Entry]]:
        """Validate and prepare `entries`, except those `busy` (a batch whose commit is not
        done) could change the outcome of: its users' and ids', and every later entry of a
        user with one held back. Those are returned, in their order, to be read again."""
        work: list[_Work] = []
        dead: list[tuple[Entry, str]] = []
        later: list[Entry] = []
        held: set[str] = set()
        for entry in entries:
            try:
                request = NotificationRequest.model_validate_json(entry.request_json)
            except ValidationError as exc:
                reason = orjson.dumps(validation_error(exc)["fields"]).decode()
                dead.append((entry, f"invalid request: {reason}"))
                continue
            user = request.user_id
            if (
                busy is not None
                and user is not None
                and (user in held or user in busy.users or request.id in busy.ids)
            ):
                held.add(user)
                later.append(entry)
                continue
            work.append(_Work(entry, request))
        fanned, work = await self._fan_out(work, dead)
        duplicates, work = await self._prepare(work, dead)
        return Prepared(work, duplicates, dead, fanned), later

    async def plan(self, prepared: Prepared) -> Batch:
        """Plan each request and stage the batch's commit (CPU only: while a commit is in
        flight the loop gets control back now and then, to send it)."""
        planned = prepared.work
        for index, item in enumerate(planned):
            if index % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)
            self._plan(item)
        outcome = self._outcome(planned, prepared)
        return Batch(
            prepared,
            self._ledger.stage(outcome) if outcome else None,
            frozenset(item.request.recipient for item in planned),
            frozenset(item.request.id for item in planned),
        )

    async def commit(self, batch: Batch) -> None:
        """Record the batch (atomically, acknowledging its entries), then push live."""
        if batch.commit is None:
            return
        counts = iter(await self._ledger.send(batch.commit))
        done = batch.prepared
        for item in done.work:
            if item.plan is not None and item.plan.inbox is not None:
                item.counts = next(counts)
        self._count(done.work, done.duplicates, done.dead)
        self._metrics.processed.labels("topic").inc(len(done.fanned))
        if any(item.plan and (item.plan.due or item.route.collect) for item in done.work):
            self._on_scheduled()
        await self._push(done.work)

    async def _fan_out(
        self, work: list[_Work], dead: list[tuple[Entry, str]]
    ) -> tuple[list[Entry], list[_Work]]:
        """Topic requests become fan-out jobs (notifier/topics_fanout.py), acknowledged with
        the batch; the rest are per-user requests."""
        topical = [w for w in work if w.request.topic is not None]
        if not topical or self._fanouts is None:
            return [], work
        refused = await self._fanouts.start(w.request for w in topical)
        dead += [(w.entry, refused[w.request.id]) for w in topical if w.request.id in refused]
        self._on_scheduled()
        fanned = [w.entry for w in topical if w.request.id not in refused]
        return fanned, [w for w in work if w.request.topic is None]

    async def _prepare(
        self, work: list[_Work], dead: list[tuple[Entry, str]]
    ) -> tuple[list[Entry], list[_Work]]:
        """Lock, find duplicates, load preferences and templates, and plan each request."""
        if not work:
            return [], []
        names = sorted({w.request.template for w in work if w.request.template})
        start = self._clock()
        found, raw_templates = await self._ledger.prepare(
            self._options.consumer,
            self._options.lock_seconds,
            [self._asked(w) for w in work],
            names,
            start,
            work[0].entry.partition,
        )
        templates = {
            name: None if raw is None else Template.model_validate_json(raw)
            for name, raw in raw_templates.items()
        }
        duplicates: list[Entry] = []
        ready: list[_Work] = []
        for index, (item, facts) in enumerate(zip(work, found, strict=True)):
            if facts.exists:
                duplicates.append(item.entry)  # processed before: acknowledge, do nothing
            elif not facts.locked:
                continue  # another replica holds it right now; left pending
            elif reason := self._refusal(item.request, facts.preferences, templates):
                dead.append((item.entry, reason))
            else:
                # A microsecond apart, so the inbox orders one batch as it arrived.
                item.at = start + timedelta(microseconds=index)
                item.facts = facts
                item.template = templates.get(item.request.template or "")
                ready.append(item)
        return duplicates, ready

    def _plan(self, item: _Work) -> None:
        facts, now = item.facts, item.at
        assert facts is not None
        assert now is not None
        prefs = self._preferences(facts.preferences)
        if item.is_digest:
            item.route = Route(summary=True)
        else:
            item.route = self._options.rules.route(item.request, facts.admitted, facts.opener)
        critical = item.request.type in self._options.critical
        configured = self._options.configured
        item.plan = plan(
            item.request, prefs, item.template, now, configured, item.route, critical=critical
        )

    def _preferences(self, raw: str | None) -> Preferences:
        if raw is None:
            return _DEFAULTS
        parsed = self._parsed.get(raw)
        if parsed is None:
            if len(self._parsed) >= _PARSED_MAX:
                self._parsed.clear()
            parsed = self._parsed[raw] = Preferences.model_validate_json(raw)
        return parsed

    def _asked(self, item: _Work) -> Asked:
        """The request and, when its type has them, its throttle and digest specs."""
        request, rules = item.request, self._options.rules
        if item.is_digest:
            return Asked(request.id, request.recipient)
        rule = rules.throttles.get(request.type)
        digest = rules.digest_of(request)
        if digest is not None:
            item.digest = digests.open_spec(request, digest)
        spec = None if rule is None else throttle.spec(request, rule)
        item.throttle_key = None if spec is None else spec["key"]
        return Asked(request.id, request.recipient, throttle=spec, digest=item.digest)

    def _refusal(
        self, request: NotificationRequest, prefs: str | None, found: dict[str, Template | None]
    ) -> str | None:
        if request.template is not None and found.get(request.template) is None:
            return f"unknown template {request.template!r}"
        if prefs is None and self._options.known_users_only:
            return f"unknown user {request.user_id!r} (no preferences saved)"
        return None

    def _outcome(self, work: list[_Work], prepared: Prepared) -> Outcome:
        duplicates, dead, fanned = prepared.duplicates, prepared.dead, prepared.fanned
        entries = [
            *duplicates,
            *fanned,
            *(entry for entry, _ in dead),
            *(item.entry for item in work),
        ]
        partition = entries[0].partition if entries else 0
        outcome = Outcome(partition=partition, acks=[entry.id for entry in [*duplicates, *fanned]])
        now = self._clock()
        stamp = now.isoformat()  # the batch's moment, written into each notification's meta
        for item in work:
            self._stage(outcome, item, now, stamp)
        for entry, reason in dead:
            outcome.dead_letter(entry, reason)
            log.warning("request_dead_lettered", entry=entry.id, reason=reason[:300])
        return outcome

    def _stage(self, outcome: Outcome, item: _Work, now: datetime, stamp: str) -> None:
        request, result = item.request, item.plan
        assert result is not None
        meta = {
            "id": request.id,
            "user_id": request.user_id,
            "type": request.type,
            "priority": request.priority.value,
            "created_at": stamp,
            "entry": item.entry.id,
        }
        due = {
            keys.due_member(request.id, channel.value): int(at.timestamp() * 1000)
            for channel, at in result.due.items()
        }
        inbox = None if result.inbox is None else (request.recipient, result.inbox)
        fields = status.fields_of(meta, result.deliveries, result.jobs)
        if item.throttle_key is not None:
            fields["th"] = item.throttle_key  # the user's throttle log, for an erasure
        collect = None
        digested = any(d.status is DeliveryState.DIGESTED for d in result.deliveries.values())
        if digested and item.digest is not None:
            at = item.at or now
            collect = {
                "digest": item.digest,
                "id": request.id,
                "event": digests.event_json(request, at),
                "score": at.timestamp(),
                "now": int(now.timestamp() * 1000),
            }
        cancel_key = request.cancel_key if _open(result) else None
        owner = (request.recipient, now)
        outcome.record(
            item.entry,
            request.id,
            fields,
            due,
            inbox,
            owner,
            cancel_key=cancel_key,
            collect=collect,
        )
        for channel, delivery in result.deliveries.items():
            if delivery.status not in _UNFINISHED:
                reason = throttle.REASON if item.route.throttled else None
                outcome.count(now, request.type, channel.value, delivery.status.value, reason)

    def _count(self, work: list[_Work], duplicates: list[Entry], dead: list[Any]) -> None:
        m = self._metrics
        m.processed.labels("accepted").inc(len(work))
        m.processed.labels("duplicate").inc(len(duplicates))
        m.processed.labels("dead_letter").inc(len(dead))
        m.dead_letters.inc(len(dead))
        ended: Counter[tuple[str, str]] = Counter()  # one metric update per label pair
        for item in work:
            assert item.plan is not None
            for channel, delivery in item.plan.deliveries.items():
                if delivery.status not in _UNFINISHED:
                    ended[(channel.value, delivery.status.value)] += 1
        for (channel_name, state), n in ended.items():
            m.deliveries.labels(channel_name, state).inc(n)

    async def _push(self, work: list[_Work]) -> None:
        """Live delivery of what is already in the inboxes, unless the commit published it
        (notifier/live.py); a failure here loses nothing."""
        if self._ledger.live is not None:
            return
        items = [
            (
                user_channel(w.request.recipient),
                notification_event(w.plan.inbox, w.counts.unseen, w.counts.unread),
            )
            for w in work
            if w.plan is not None and w.plan.inbox is not None and w.counts is not None
        ]
        if not items:
            return
        encoded = [(channel, orjson.dumps(event).decode()) for channel, event in items]
        if not getattr(self._broker, "sharded", False):
            await self._publish(encoded)
            return
        # A Cluster publishes one item per round trip: the users' channels at once, each
        # user's events in their order.
        per_user: dict[str, list[tuple[str, str]]] = {}
        for channel, data in encoded:
            per_user.setdefault(channel, []).append((channel, data))
        await asyncio.gather(*(self._publish(chunk) for chunk in per_user.values()))

    async def _publish(self, encoded: list[tuple[str, str]]) -> None:
        try:
            await self._broker.publish_many(encoded)
        except BrokerError as exc:
            self._metrics.push_failures.inc(len(encoded))
            log.warning("live_push_failed", count=len(encoded), error=str(exc))
