"""The live events the notifier publishes on a user's channel (the `data` of a publication)."""

from __future__ import annotations

from typing import Any

from notifier.schemas import InboxItem


def notification_event(item: InboxItem, unread: int) -> dict[str, Any]:
    return {
        "type": "notification",
        "id": item.id,
        "notification_type": item.type,
        "title": item.title,
        "body": item.body,
        "priority": item.priority.value,
        "data": item.data,
        "created_at": item.created_at.isoformat(),
        "unread": unread,
    }


def inbox_event(unread: int) -> dict[str, Any]:
    return {"type": "inbox", "unread": unread}
