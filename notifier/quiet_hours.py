"""Quiet hours: a daily window in the user's own time zone, possibly across midnight."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from archmesh_client.notifications import Priority

from notifier.schemas import Preferences

# These reach the user whatever the hour: that is what the priority is for.
OVERRIDING = frozenset({Priority.HIGH, Priority.URGENT})


def _clock(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def quiet_until(preferences: Preferences, now: datetime) -> datetime | None:
    """When the window that holds `now` ends (UTC), or None outside quiet hours."""
    window = preferences.quiet_hours
    if window is None or not window.enabled or window.start == window.end:
        return None
    zone = ZoneInfo(preferences.timezone)
    local = now.astimezone(zone)
    start, end, at = _clock(window.start), _clock(window.end), local.time()
    if start < end:
        inside, end_day = start <= at < end, local.date()
    else:  # crosses midnight: 22:00-07:00 holds both 23:30 and 06:00
        inside = at >= start or at < end
        end_day = local.date() + timedelta(days=1) if at >= start else local.date()
    if not inside:
        return None
    return datetime.combine(end_day, end, tzinfo=zone).astimezone(UTC)
