"""The live events the notifier publishes on a user's channel (the `data` of a publication).

Both carry the inbox's `unseen` and `unread` counts as they are right after the change."""

from __future__ import annotations

from typing import Any

import orjson

from notifier.schemas import InboxItem


def notification_fields(item: InboxItem) -> dict[str, Any]:
    """A new item's event without its counts."""
    return {
        "type": "notification",
        "id": item.id,
        "notification_type": item.type,
        "title": item.title,
        "body": item.body,
        "priority": item.priority.value,
        "data": item.data,
        "actions": [action.model_dump() for action in item.actions],
        "created_at": item.created_at.isoformat(),
    }


def notification_event(item: InboxItem, unseen: int, unread: int) -> dict[str, Any]:
    return {**notification_fields(item), "unseen": unseen, "unread": unread}


def notification_prefix(item: InboxItem) -> str:
    """The event's JSON text up to its counts: a script appends `,"unseen":n,"unread":m}`
    with the counts it has just made."""
    return orjson.dumps(notification_fields(item)).decode()[:-1]


def inbox_event(unseen: int, unread: int) -> dict[str, Any]:
    return {"type": "inbox", "unseen": unseen, "unread": unread}
