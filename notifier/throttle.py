"""Throttles: at most K notifications of a type per user (and `throttle_key`) in a sliding
window; the rest are suppressed with the reason `throttled`, or collected into the type's
digest when it has one.

The admission is part of the batch's prepare script, as a sliding log of notification ids: a
request processed again after a crash finds its own id and is admitted again, never counted
twice, and two replicas admitting at once are serialised by Redis."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from archmesh_client.notifications import NotificationRequest, parse_duration

from notifier import keys

REASON = "throttled"
_RULE = re.compile(r"^(\d{1,6})/(\w+)$")


@dataclass(frozen=True, slots=True)
class ThrottleRule:
    limit: int
    window: float  # seconds


def parse_rule(text: str) -> ThrottleRule:
    match = _RULE.match(text.strip())
    if match is None or int(match[1]) < 1:
        raise ValueError(f"{text!r}: a throttle is K/window, e.g. 5/1h")
    return ThrottleRule(int(match[1]), parse_duration(match[2]))


def spec(request: NotificationRequest, rule: ThrottleRule) -> dict[str, Any]:
    """What prepare.lua needs to admit `request` or not."""
    assert request.user_id is not None  # topic requests are fanned out before this
    name = f"{request.user_id}|{request.type}|{request.throttle_key or ''}"
    return {
        "key": keys.throttle(name, request.user_id),
        "limit": rule.limit,
        "window": int(rule.window * 1000),
    }
