"""Digests: a type's notifications to one user (and `digest_key`) collected over a window and
sent as one message per medium, whose template gets `events` (the first `show`) and `count`.

A window opens with the first event (prepare.lua, which also says whether the rule sends that
first one at once), collects events in the same script that records them (commit.lua), and is
closed by a due job `#dg:<digest id>` in the notifier's one scheduler (nt:due, with leases).
Closing is one script (digest_close.lua): it turns the window into an ordinary request on the
intake stream, with the digest id as its id, and deletes the window, all or nothing. So a
replica killed at any point leaves either an open window (closed later by another replica) or
a queued request (processed once, by its id): never two digests, never none."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from archmesh_client.notifications import REQUEST_FIELD, Medium, NotificationRequest, parse_duration

from notifier import keys
from shared.lua import lua

_OPTION = re.compile(r"^(window|sliding|max|first|show|in_app):(\w+)$")


@dataclass(frozen=True, slots=True)
class DigestRule:
    window: float  # seconds: the window's length, or (sliding) the quiet gap that closes it
    sliding_max: float = 0.0  # sliding: a window never lasts longer than this; 0 = fixed
    max_events: int = 1000  # this many events close the window at once
    first_now: bool = False  # the window's first event is sent at once, the rest collected
    show: int = 20  # events the template gets (`count` has them all)
    in_app_each: bool = True  # in-app stays one item per event; else in-app is digested too

    def collected(self, requested: list[Medium] | None) -> frozenset[Medium]:
        media = set(requested or Medium)
        if self.in_app_each:
            media.discard(Medium.IN_APP)
        return frozenset(media)


def parse_rule(text: str) -> DigestRule:
    """`window:10m;sliding:1h;max:50;first:now;show:20;in_app:each` (only window is needed)."""
    options: dict[str, str] = {}
    for raw in text.split(";"):
        match = _OPTION.match(raw.strip())
        if match is None:
            raise ValueError(
                f"{raw.strip()!r}: options are window, sliding, max, first, show, in_app"
            )
        options[match[1]] = match[2]
    if "window" not in options:
        raise ValueError("a digest needs window:<duration>")
    window = parse_duration(options["window"])
    sliding = parse_duration(options["sliding"]) if "sliding" in options else 0.0
    if window <= 0 or (sliding and sliding < window):
        raise ValueError("window must be positive and sliding (the maximum) at least the window")
    if options.get("first", "now") != "now" or options.get("in_app", "each") not in {
        "each",
        "digest",
    }:
        raise ValueError("first:now, in_app:each or in_app:digest")
    numbers = {k: options[k] for k in ("max", "show") if k in options}
    if any(not v.isdigit() or int(v) < 1 for v in numbers.values()):
        raise ValueError("max and show are positive integers")
    return DigestRule(
        window=window,
        sliding_max=sliding,
        max_events=int(numbers.get("max", 1000)),
        first_now="first" in options,
        show=int(numbers.get("show", 20)),
        in_app_each=options.get("in_app", "each") == "each",
    )


def name_of(request: NotificationRequest) -> str:
    return f"{request.user_id}|{request.type}|{request.digest_key or ''}"


def open_spec(request: NotificationRequest, rule: DigestRule) -> dict[str, Any]:
    """What prepare.lua and commit.lua need to open the window if none is open: a fresh id,
    and the digest's own request without its `data` (the close adds `events` and `count`)."""
    assert request.user_id is not None  # topic requests are fanned out before this
    digest_id = f"dg-{uuid.uuid4().hex}"
    skeleton = NotificationRequest(
        id=digest_id,
        user_id=request.user_id,
        type=request.type,
        title=request.title,
        template=request.template,
        priority=request.priority,
        locale=request.locale,
        channels=sorted(rule.collected(request.channels)),
    )
    return {
        "pointer": keys.digest_open(name_of(request), request.user_id),
        "window_prefix": keys.digest("", keys.of_user(request.user_id))[0],
        "job_prefix": keys.DIGEST_JOB,
        "id": digest_id,
        "skeleton": skeleton.model_dump_json(exclude={"data"}, exclude_none=True),
        "window": int(rule.window * 1000),
        "sliding": int(rule.sliding_max * 1000),
        "max": rule.max_events,
        "show": rule.show,
        "first": rule.first_now,
    }


def event_json(request: NotificationRequest, now: datetime) -> str:
    """One collected event as the digest's template sees it in `events`."""
    event = {
        "id": request.id,
        "title": request.title,
        "body": request.body,
        "data": request.data,
        "created_at": now.isoformat(),
    }
    return orjson.dumps(event).decode()


def summary(title: str | None, data: dict[str, Any]) -> tuple[str, str]:
    """Title and body of a digest sent without a template."""
    events = data.get("events") or []
    count = int(data.get("count") or len(events))
    first = (events[0].get("title") if events else None) or title or "Notifications"
    heading = first if count == 1 else f"{first} and {count - 1} more"
    lines = [f"{e.get('title') or ''}: {e.get('body') or ''}".strip(": ") for e in events]
    return heading, "\n\n".join(lines)


class DigestCloser:
    """Runs a due `#dg:<id>` job: closes the window if its time has come (or re-schedules it)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._close = redis.register_script(lua("notifier.scripts", "digest_close.lua"))

    async def close(self, digest_id: str, now: datetime, partition: int = 0) -> int:
        """Events sent in the digest (0: nothing, or not due yet). The window names its
        pointer (`keys.digest_open`, in the same partition): read first, so that the script
        declares every key it touches (on a Cluster an undeclared key is not checked against
        the slot's migration before the script starts)."""
        window, events, data = keys.digest(digest_id, partition)
        payload = orjson.dumps(
            {
                "member": f"{keys.DIGEST_JOB}{digest_id}",
                "now": int(now.timestamp() * 1000),
                "field": REQUEST_FIELD,
                "marker": keys.DIGEST_FIELD,
            }
        )
        while True:
            pointer = await self._redis.hget(window, "pointer")
            declared = [window, events, data, keys.due(partition), keys.requests(partition)]
            sent = int(
                await self._close(keys=declared + ([pointer] if pointer else []), args=[payload])
            )
            if sent >= 0:
                return sent
