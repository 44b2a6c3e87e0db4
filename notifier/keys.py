"""The notifier's Redis key layout (documented in the README for other languages).

Everything lives under `nt:`; the request stream and its dead letters are the public part."""

from __future__ import annotations

from typing import NamedTuple

from archmesh_client import cancellation, topics
from archmesh_client.notifications import REQUEST_STREAM

REQUESTS = REQUEST_STREAM  # XADD nt:requests * request <NotificationRequest JSON>
DEAD_LETTERS = "nt:dead"  # entries: request, reason, entry, failed_at
GROUP = "notifiers"
DUE = cancellation.DUE  # zset "<id>|<channel>" (or "#dg:<digest id>") -> unix ms it is due
DIGEST_JOB = "#dg:"  # due member of a digest's close ("#" is not in the id alphabet)
DIGEST_FIELD = "digest"  # stream field marking a digest's own request (not digested again)
FANOUT_JOB = "#fo:"  # due member of a topic fan-out: "#fo:<topic>|<request id>"
ATTEMPTS = "nt:attempts"  # hash entry id -> failed processing attempts
SESSIONS = "nt:sessions"  # hash session id -> owner user id (workflow rules)


def notification(notification_id: str) -> str:
    return f"{cancellation.NOTIFICATION_PREFIX}{notification_id}"


def lock(notification_id: str) -> str:
    return f"nt:lock:{notification_id}"


def preferences(user_id: str) -> str:
    return f"nt:prefs:{user_id}"


def template(name: str) -> str:
    return f"nt:tpl:{name}"


class InboxKeys(NamedTuple):
    """One user's inbox. An item's id is its notification's id; read implies seen, archived
    implies read (so the two counts are the two sets' sizes)."""

    order: str  # zset id -> created_at (unix seconds): newest first
    items: str  # hash id -> InboxItem JSON (without its marks)
    unread: str  # set of ids not read
    unseen: str  # set of ids not seen
    archived: str  # set of archived ids


def inbox(user_id: str) -> InboxKeys:
    base = f"nt:inbox:{user_id}"
    return InboxKeys(base, f"{base}:items", f"{base}:unread", f"{base}:unseen", f"{base}:archived")


def cancel_index(cancel_key: str) -> str:
    """Set of the notification ids that carried `cancel_key`."""
    return cancellation.index_key(cancel_key)


def throttle(name: str) -> str:
    """Zset notification id -> ms admitted, of one user's type (and key): a sliding log."""
    return f"nt:th:{name}"


def digest_open(name: str) -> str:
    """The id of the digest window open for `name` (user|type|digest_key), if one is."""
    return f"nt:dg:{name}"


def digest(digest_id: str) -> tuple[str, str, str]:
    """A digest window: its hash (id, skeleton, opened, closes, max, show, opener), its
    events (zset id -> arrival) and their content (hash id -> event JSON)."""
    base = f"nt:dgw:{digest_id}"
    return base, f"{base}:ev", f"{base}:data"


def stats(hour: str) -> str:
    return f"nt:stats:{hour}"


def workflow_request(request_id: str) -> str:
    """Marks a workflow event's request as enqueued (one replica enqueues it, once)."""
    return f"nt:wf:{request_id}"


def due_member(notification_id: str, channel: str) -> str:
    return f"{notification_id}|{channel}"


def user_notifications(user_id: str) -> str:
    """zset: the user's notification ids (scored by creation, ms) while their statuses live,
    so an erasure finds the user's statuses and pending jobs without scanning `nt:n:*`."""
    return f"nt:user:{user_id}:notifications"


def topic_subscribers(topic: str) -> str:
    """zset user id -> 0 (user id order), hash-tagged `{topic:<name>}` like every topic key."""
    return topics.subscribers_key(topic)


def user_topics(user_id: str) -> str:
    """set: the user's topics, so an erasure finds their subscriptions without a scan."""
    return topics.user_topics_key(user_id)


def fanout(topic: str, request_id: str) -> str:
    """hash: one topic request's fan-out (request, cursor = last user id enqueued, state)."""
    return f"{topics.topic_key(topic)}:fo:{request_id}"


def fanout_job(topic: str, request_id: str) -> str:
    """Its member of `DUE` (claimed with a lease like a delivery)."""
    return f"{FANOUT_JOB}{topic}|{request_id}"


def user_keys(user_id: str) -> list[str]:
    """Every key that belongs to one user alone: an erasure deletes them whole.

    A new per-user key goes here too. (The user's entries in the topics' subscriber sets are
    not theirs alone: notifier/erasure.py removes them first, found through `user_topics`.)"""
    return [
        preferences(user_id),
        *inbox(user_id),
        user_notifications(user_id),
        user_topics(user_id),
    ]


def timeline(notification_id: str) -> str:
    """List: every status change of the notification's media, oldest first (the console's
    timeline), written with the status itself and expiring with it."""
    return f"{cancellation.TIMELINE_PREFIX}{notification_id}"


# -- what providers report after accepting a message (notifier/feedback.py) ---------------------


def suppressed_email(address_hash: str) -> str:
    """An address that hard-bounced, by the SHA-256 of its lower-cased form (the address itself
    is not kept): JSON {reason, at}. No expiry: later emails to it are `suppressed`."""
    return f"nt:suppressed:email:{address_hash}"


def provider_event(event_hash: str) -> str:
    """Marks one provider event (an email event id, a Twilio sid and status) as applied, so
    each is applied once; kept for the status retention."""
    return f"nt:fb:event:{event_hash}"


def webhook_signature(signature: str) -> str:
    """A signed webhook request already taken: refused as a replay until its timestamp is
    past the tolerance."""
    return f"nt:fb:sig:{signature}"


def sms_message(sid: str) -> str:
    """Twilio's MessageSid -> `<notification id>|sms`, kept for the status retention, so a
    status callback finds its delivery."""
    return f"nt:sms:{sid}"
