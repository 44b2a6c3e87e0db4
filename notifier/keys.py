"""The notifier's Redis key layout (documented in docs/notifier.md for other languages).

Everything lives under `nt:`. The keys are split into partitions
(`archmesh_client.request_stream.Partitioning`): a user belongs to one, and every key that
serves one user's requests (stream, due jobs, statuses, locks, inbox, preferences, throttle
logs, digest windows, cancel index, analytics counts, dead letters) starts with that
partition's prefix `nt:{<tag>}:`, so every script touches one Cluster slot. One Redis with one
partition keeps the untagged names (`nt:requests`, `nt:n:<id>`...), unchanged.

A process runs one layout: `use()` sets it once at start (the notifier's settings decide it),
and the per-user key functions below find the user's partition with it. Functions of keys that
are not found by user (a notification by its id, a due set) take the partition: their default,
0, is right only untagged, so code that works for one user passes `of_user(user_id)`, and code
that works on everything walks `partitions()`. A script is called with a key of its partition
as KEYS[1] (even one that reads its keys from ARGV): that routes it to the slot's master."""

from __future__ import annotations

from typing import NamedTuple

from archmesh_client import cancellation, topics
from archmesh_client.notifications import REQUEST_STREAM
from archmesh_client.request_stream import Partitioning

REQUESTS = REQUEST_STREAM  # untagged: XADD nt:requests * request <NotificationRequest JSON>
DEAD_LETTERS = "nt:dead"  # entries: request, reason, entry, failed_at
GROUP = "notifiers"
DUE = cancellation.DUE  # zset "<id>|<channel>" (or "#dg:<digest id>") -> unix ms it is due
DIGEST_JOB = "#dg:"  # due member of a digest's close ("#" is not in the id alphabet)
DIGEST_FIELD = "digest"  # stream field marking a digest's own request (not digested again)
FANOUT_JOB = "#fo:"  # due member of a topic fan-out: "#fo:<topic>|<request id>"
ATTEMPTS = "nt:attempts"  # hash entry id -> failed processing attempts
SESSIONS = "nt:sessions"  # hash session id -> owner user id (workflow rules)

_layout = Partitioning()


def use(layout: Partitioning) -> None:
    """The layout of this process's keys (set once, before any key is built)."""
    global _layout
    _layout = layout


def layout() -> Partitioning:
    return _layout


def partitions() -> range:
    return range(_layout.partitions)


def of_user(user_id: str) -> int:
    return _layout.of_user(user_id)


def prefix(partition: int) -> str:
    return _layout.prefix(partition)


def _at(partition: int, name: str) -> str:
    """An untagged name (`nt:due`) in `partition`."""
    return prefix(partition) + name.removeprefix("nt:")


def _of(user_id: str, name: str) -> str:
    return _at(of_user(user_id), name)


def requests(partition: int = 0) -> str:
    return _layout.stream(partition)


def dead_letters(partition: int = 0) -> str:
    return _at(partition, DEAD_LETTERS)


def attempts(partition: int = 0) -> str:
    return _at(partition, ATTEMPTS)


def due(partition: int = 0) -> str:
    return _at(partition, DUE)


def sessions(shard: int = 0) -> str:
    """Hash session id -> {owner, offset, epoch}: the sessions of one shard (a session's shard
    is its id's partition; the replica holding that partition's lease watches them)."""
    return _at(shard, SESSIONS)


def shard_of_session(session_id: str) -> int:
    return _layout.of_user(session_id)


def lease(partition: int) -> str:
    """The replica that holds `partition` (reads its stream, watches its sessions)."""
    return _at(partition, "nt:lease")


LAYOUT = "nt:{nt}:partitions"  # the partition count the data was written with (partitioned)
REPLICAS = "nt:{nt}:replicas"  # zset replica -> unix ms its heartbeat ends (partitioned only)


def notification(notification_id: str, partition: int = 0) -> str:
    return _at(partition, f"{cancellation.NOTIFICATION_PREFIX}{notification_id}")


def lock(notification_id: str, partition: int = 0) -> str:
    return _at(partition, f"nt:lock:{notification_id}")


def preferences(user_id: str) -> str:
    return preferences_prefix(of_user(user_id)) + user_id


def preferences_prefix(partition: int) -> str:
    """What the preferences keys of `partition`'s users start with (a batch's script adds the
    user id)."""
    return _at(partition, "nt:prefs:")


def template(name: str) -> str:
    """Templates are not per user: one slot of their own when tagged."""
    return f"nt:{{nt}}:tpl:{name}" if _layout.tagged else f"nt:tpl:{name}"


class InboxKeys(NamedTuple):
    """One user's inbox. An item's id is its notification's id; read implies seen, archived
    implies read (so the two counts are the two sets' sizes)."""

    order: str  # zset id -> created_at (unix seconds): newest first
    items: str  # hash id -> InboxItem JSON (without its marks)
    unread: str  # set of ids not read
    unseen: str  # set of ids not seen
    archived: str  # set of archived ids


def inbox(user_id: str) -> InboxKeys:
    base = _of(user_id, f"nt:inbox:{user_id}")
    return InboxKeys(base, f"{base}:items", f"{base}:unread", f"{base}:unseen", f"{base}:archived")


def inbox_prefix(partition: int) -> str:
    """`inbox(user).order` of a user of `partition` without the user id (commit.lua builds a
    batch's names from it and InboxKeys' suffixes)."""
    return _at(partition, "nt:inbox:")


def cancel_index(cancel_key: str, partition: int = 0) -> str:
    """Set of the notification ids of `partition` that carried `cancel_key`."""
    return cancellation.index_key(cancel_key, prefix(partition))


def throttle(name: str, user_id: str = "") -> str:
    """Zset notification id -> ms admitted, of one user's type (and key): a sliding log; in
    `user_id`'s partition (the user is needed when partitioned)."""
    return _of(user_id, f"nt:th:{name}")


def digest_open(name: str, user_id: str = "") -> str:
    """The id of the digest window open for `name` (user|type|digest_key), if one is; in
    `user_id`'s partition (the user is needed when partitioned)."""
    return _of(user_id, f"nt:dg:{name}")


def digest(digest_id: str, partition: int = 0) -> tuple[str, str, str]:
    """A digest window: its hash (id, skeleton, opened, closes, max, show, opener), its
    events (zset id -> arrival) and their content (hash id -> event JSON)."""
    base = _at(partition, f"nt:dgw:{digest_id}")
    return base, f"{base}:ev", f"{base}:data"


def stats(hour: str, partition: int = 0) -> str:
    """Counts of one hour of the notifications of `partition` (analytics sums partitions)."""
    return _at(partition, f"nt:stats:{hour}")


def workflow_request(request_id: str, user_id: str) -> str:
    """Marks a workflow event's request as enqueued (one replica enqueues it, once); in the
    partition of the user it goes to, beside that partition's stream."""
    return _of(user_id, f"nt:wf:{request_id}")


def due_member(notification_id: str, channel: str) -> str:
    return f"{notification_id}|{channel}"


def user_notifications(user_id: str) -> str:
    """zset: the user's notification ids (scored by creation, ms) while their statuses live,
    so an erasure finds the user's statuses and pending jobs without scanning `nt:n:*`."""
    return _of(user_id, f"nt:user:{user_id}:notifications")


def user_notifications_affixes(partition: int) -> tuple[str, str]:
    """What `user_notifications` of a user of `partition` has before and after the user id
    (commit.lua builds a batch's names from them)."""
    return _at(partition, "nt:user:"), ":notifications"


def topic_subscribers(topic: str) -> str:
    """zset user id -> 0 (user id order), hash-tagged `{topic:<name>}` like every topic key."""
    return topics.subscribers_key(topic)


def user_topics(user_id: str) -> str:
    """set: the user's topics, so an erasure finds their subscriptions without a scan."""
    return topics.user_topics_key(user_id)


def user_erasing(user_id: str) -> str:
    """Set while a user's erasure runs (archmesh_client/topics.py: a subscribe that finds it
    undoes itself)."""
    return topics.erasing_key(user_id)


ERASING_SECONDS = topics.ERASING_SECONDS


def fanout(topic: str, request_id: str) -> str:
    """hash: one topic request's fan-out (request, cursor = last user id enqueued, state)."""
    return f"{topics.topic_key(topic)}:fo:{request_id}"


def fanout_job(topic: str, request_id: str) -> str:
    """Its member of the due set of `fanout_partition(topic)` (claimed with a lease like a
    delivery)."""
    return f"{FANOUT_JOB}{topic}|{request_id}"


def fanout_partition(topic: str) -> int:
    """The partition a topic request is queued on (archmesh_client.request_stream.enqueue), and
    whose due set holds its fan-out job."""
    return of_user(f"topic:{topic}")


def user_keys(user_id: str) -> list[str]:
    """Every key that belongs to one user alone: an erasure deletes them whole.

    A new per-user key goes here too, in the user's partition (the erase script runs there).
    The user's topics are not here: their set (`user_topics`, written by the client package
    too) and their entries in each topic's subscribers live in other slots, so
    notifier/erasure.py removes them one key at a time first."""
    return [preferences(user_id), *inbox(user_id), user_notifications(user_id)]


def timeline(notification_id: str, partition: int = 0) -> str:
    """List: every status change of the notification's media, oldest first (the console's
    timeline), written with the status itself (beside it, in its partition) and expiring
    with it."""
    return _at(partition, f"{cancellation.TIMELINE_PREFIX}{notification_id}")


# -- what providers report after accepting a message (notifier/feedback.py) ---------------------


def suppressed_email(address_hash: str) -> str:
    """An address that hard-bounced, by the SHA-256 of its lower-cased form (the address itself
    is not kept): JSON {reason, at}. No expiry: later emails to it are `suppressed`."""
    return f"nt:suppressed:email:{address_hash}"


def provider_event(event_hash: str, partition: int = 0) -> str:
    """Marks one provider event (an email event id, a Twilio sid and status) as applied, so
    each is applied once; kept for the status retention, beside the notification's status (in
    its partition: the two are changed in one transaction)."""
    return _at(partition, f"nt:fb:event:{event_hash}")


def webhook_signature(signature: str) -> str:
    """A signed webhook request already taken: refused as a replay until its timestamp is
    past the tolerance."""
    return f"nt:fb:sig:{signature}"


def sms_message(sid: str) -> str:
    """Twilio's MessageSid -> `<notification id>|sms`, kept for the status retention, so a
    status callback finds its delivery. Tagged by the sid, to share a slot with
    `sms_early(sid)` (the two are changed in one script)."""
    return f"nt:sms:{{{sid}}}"


def sms_early(sid: str) -> str:
    """List: the status callbacks of an SMS that came before its sid was stored (Twilio can
    call back before its reply to the send has reached us), applied when it is."""
    return f"{sms_message(sid)}:early"


def sms_message_untagged(sid: str) -> str:
    """Where `sms_message` was before it was tagged: still read, for the SMS sent by an
    older notifier (kept for the status retention; nothing writes it any more)."""
    return f"nt:sms:{sid}"
