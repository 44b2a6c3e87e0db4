"""The notifier's Redis key layout (documented in the README for other languages).

Everything lives under `nt:`; the request stream and its dead letters are the public part."""

from __future__ import annotations

from archmesh_client.notifications import REQUEST_STREAM

REQUESTS = REQUEST_STREAM  # XADD nt:requests * request <NotificationRequest JSON>
DEAD_LETTERS = "nt:dead"  # entries: request, reason, entry, failed_at
GROUP = "notifiers"
DUE = "nt:due"  # zset "<id>|<channel>" -> unix ms when the delivery is due (or its lease ends)
ATTEMPTS = "nt:attempts"  # hash entry id -> failed processing attempts
SESSIONS = "nt:sessions"  # hash session id -> owner user id (workflow rules)


def notification(notification_id: str) -> str:
    return f"nt:n:{notification_id}"


def lock(notification_id: str) -> str:
    return f"nt:lock:{notification_id}"


def preferences(user_id: str) -> str:
    return f"nt:prefs:{user_id}"


def template(name: str) -> str:
    return f"nt:tpl:{name}"


def inbox(user_id: str) -> tuple[str, str, str]:
    """Ordered ids, items by id, unread ids."""
    base = f"nt:inbox:{user_id}"
    return base, f"{base}:items", f"{base}:unread"


def stats(hour: str) -> str:
    return f"nt:stats:{hour}"


def workflow_request(request_id: str) -> str:
    """Marks a workflow event's request as enqueued (one replica enqueues it, once)."""
    return f"nt:wf:{request_id}"


def due_member(notification_id: str, channel: str) -> str:
    return f"{notification_id}|{channel}"


def timeline(notification_id: str) -> str:
    """List: every status change of the notification's media, oldest first (the console's
    timeline), written with the status itself and expiring with it."""
    return f"nt:log:{notification_id}"
