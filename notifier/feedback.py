"""Providers' feedback in Redis: reports on deliveries, the email suppression list, the map
from Twilio's message sids to notifications (holding a status callback that comes before its
sid is stored), and what makes each provider event count once.

Each event is applied by one script that also marks it applied (feedback_apply.lua;
`keys.provider_event` is in the notification's partition, so the script stays in one Cluster
slot), so a provider that sends an event twice, or two notifiers taking it at once, change the
status and the analytics once. Which report wins is decided here (notifier/feedback_report.py)
on what was read; the script writes only if that is still what is kept, else it is read again.
A suppression (a key of its own, by address) is set just before: a repeat sets it again,
harmlessly. The suppression list holds the SHA-256 of an address, never the
address: it tells whether an address bounced, and nothing else."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson
import redis.asyncio as aioredis
from archmesh_client.notifications import Medium

from notifier import analytics, keys
from notifier.feedback_report import Report, field_of, supersedes
from notifier.metrics import NotifierMetrics
from notifier.settings import NotifierSettings
from shared.logging import get_logger
from shared.lua import lua
from shared.redis_calls import NETWORK_ERRORS

log = get_logger(__name__)


class Applied(StrEnum):
    """What became of one provider event."""

    RECORDED = "recorded"  # the delivery's status (or its provider report) changed
    UNCHANGED = "unchanged"  # taken, but a report of equal or higher rank is kept already
    UNMATCHED = "unmatched"  # no such delivery (unknown, or its status expired)
    DUPLICATE = "duplicate"  # this event was applied before
    HELD = "held"  # an SMS whose sid is not stored yet: applied when it is (or expires)


SMS_EARLY_HOLD = 3600  # seconds a status callback that came before its SMS's sid is kept
SMS_EARLY_MAX = 10  # callbacks kept per sid (Twilio sends a few final ones at most)


def address_hash(address: str) -> str:
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


def event_hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


class ProviderFeedback:
    def __init__(
        self,
        redis: aioredis.Redis,
        retention: float,
        metrics: NotifierMetrics,
        clock: Callable[[], datetime],
        *,
        track_sms: bool,
    ) -> None:
        """`track_sms`: remember each SMS's sid (only worth it when SMS carry a status
        callback, i.e. a public URL is set)."""
        self._redis = redis
        self._retention = int(retention)
        self._metrics = metrics
        self._clock = clock
        self._track_sms = track_sms
        self._apply = redis.register_script(lua("notifier.scripts", "feedback_apply.lua"))
        self._sms_sent = redis.register_script(lua("notifier.scripts", "sms_sent.lua"))
        self._sms_callback = redis.register_script(lua("notifier.scripts", "sms_callback.lua"))

    @classmethod
    def from_settings(
        cls,
        redis: aioredis.Redis,
        s: NotifierSettings,
        metrics: NotifierMetrics,
        clock: Callable[[], datetime],
    ) -> ProviderFeedback:
        return cls(
            redis, s.notifier_retention, metrics, clock, track_sms=bool(s.notifier_public_url)
        )

    # -- what the deliverer asks and tells -----------------------------------------------------

    async def email_suppression(self, address: str) -> str | None:
        """Why emails to `address` are not sent (it hard-bounced), or None."""
        raw = await self._redis.get(keys.suppressed_email(address_hash(address)))
        if raw is None:
            return None
        found = orjson.loads(raw)
        return f"address suppressed since {found['at']}: {found['reason']}"

    async def sms_sent(self, sid: str, notification_id: str) -> None:
        """Remember which notification an accepted SMS belongs to, and apply the status
        callbacks that came before this (held by `sms_status`). Never raises: the SMS is out,
        and a failure here must not make the deliverer send it again (its callbacks are then
        held until they expire)."""
        if not self._track_sms:
            return
        value = f"{notification_id}|{Medium.SMS.value}"
        mapped, early = keys.sms_message(sid), keys.sms_early(sid)
        try:
            held = await self._sms_sent(keys=[mapped, early], args=[value, self._retention])
            for raw in held:
                callback = orjson.loads(raw)
                report = Report.model_validate_json(callback["report"])
                applied = await self.apply(callback["event"], notification_id, Medium.SMS, report)
                log.info("sms_status", status=report.provider_status, outcome=applied.value)
            if held:  # each applied once (by its event), so deleting them last loses none
                await self._redis.delete(early)
        except NETWORK_ERRORS as exc:
            log.warning(
                "sms_sid_not_stored", notification=notification_id, error=type(exc).__name__
            )

    # -- what webhooks ask ---------------------------------------------------------------------

    async def sms_status(self, sid: str, event: str, report: Report) -> Applied:
        """Apply a status callback to the SMS sent as `sid`, or hold it (`HELD`) until the
        deliverer stores the sid (`sms_sent`): Twilio may call back before its reply to the
        send has reached us. Held callbacks expire after `SMS_EARLY_HOLD`."""
        held = orjson.dumps({"event": event, "report": report.model_dump_json()})
        found = await self._sms_callback(
            keys=[keys.sms_message(sid), keys.sms_early(sid)],
            args=[held, SMS_EARLY_HOLD, SMS_EARLY_MAX],
        )
        if found is None:  # an SMS sent by a notifier before the map was tagged
            found = await self._redis.get(keys.sms_message_untagged(sid))
        if found is None:
            return Applied.HELD
        return await self.apply(event, str(found).rpartition("|")[0], Medium.SMS, report)

    def refused(self, provider: str, reason: str) -> None:
        """Count a webhook request refused (see `NotifierMetrics.webhooks_refused`)."""
        self._metrics.webhooks_refused.labels(provider, reason).inc()

    async def meta(self, notification_id: str) -> dict[str, Any] | None:
        found = await self._find(notification_id)
        if found is None:
            return None
        raw = await self._redis.hget(keys.notification(notification_id, found), "meta")
        return None if raw is None else dict(orjson.loads(raw))

    async def _find(self, notification_id: str) -> int | None:
        """The partition holding the notification's status (its id does not say)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition in keys.partitions():
                pipe.exists(keys.notification(notification_id, partition))
            found = await pipe.execute()
        return next((p for p, hit in zip(keys.partitions(), found, strict=True) if hit), None)

    async def applied(self, event: str) -> bool:
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition in keys.partitions():
                pipe.exists(keys.provider_event(event, partition))
            return any(await pipe.execute())

    async def take_signature(self, signature: str, seconds: float) -> bool:
        """False if this signed request was taken already (a replay)."""
        key = keys.webhook_signature(signature)
        return bool(await self._redis.set(key, "1", nx=True, ex=max(1, int(seconds))))

    async def release_signature(self, signature: str) -> None:
        """Let the same request be sent again: it failed before all its events were applied."""
        await self._redis.delete(keys.webhook_signature(signature))

    async def apply(
        self,
        event: str,
        notification_id: str | None,
        medium: Medium,
        report: Report,
        suppress: str | None = None,
    ) -> Applied:
        """Record `report` on the delivery (if it outranks what is kept) and, with `suppress`
        (an address), add it to the suppression list; at most once per `event`."""
        partition = (await self._find(notification_id) if notification_id else None) or 0
        marker = keys.provider_event(event, partition)  # beside the status: one slot
        key = keys.notification(notification_id, partition) if notification_id else None
        if suppress is not None:  # its own key (by address, in no partition): set first, and
            # again by a repeat, which is harmless, so a crash in between loses nothing
            entry = {"reason": report.reason or "", "at": report.at.isoformat()}
            await self._redis.set(
                keys.suppressed_email(address_hash(suppress)), orjson.dumps(entry)
            )
        now = self._clock()
        while True:
            kind, kept = await self._delivery(key, medium)
            old = None if kept is None else Report.model_validate_json(kept)
            change = kind is not None and supersedes(report, old)
            counted = report.status.value if change and report.status is not None else None
            written = [marker]
            if key is not None:
                written += [key, keys.stats(analytics.hour_of(now), partition)]
            done = await self._apply(
                keys=written,
                args=[
                    self._retention,
                    f"ch:{medium.value}",
                    field_of(medium),
                    "0" if kind is None else "1" + (kept or ""),
                    report.model_dump_json() if change else "",
                    analytics.field(kind, medium.value, counted) if kind and counted else "",
                    analytics.RETENTION_SECONDS,
                ],
            )
            if int(done) >= 0:
                break
        if int(done) == 0:
            return Applied.DUPLICATE
        if counted is not None:
            self._metrics.deliveries.labels(medium.value, counted).inc()
        if kind is None:
            return Applied.UNMATCHED
        return Applied.RECORDED if change else Applied.UNCHANGED

    async def _delivery(self, key: str | None, medium: Medium) -> tuple[str | None, str | None]:
        """The notification's type (None: no such delivery) and the report kept on it (raw)."""
        if key is None:
            return None, None
        meta, delivery, kept = await self._redis.hmget(
            key, ["meta", f"ch:{medium.value}", field_of(medium)]
        )
        if meta is None or delivery is None:
            return None, None
        return str(orjson.loads(meta)["type"]), None if kept is None else str(kept)
