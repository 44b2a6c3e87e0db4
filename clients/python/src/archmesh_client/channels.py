"""Channel names and their Redis key layout.

A channel is `broadcast`, `session:<id>` or `user:<id>`. Every Redis name that belongs to a
channel carries the channel in a hash tag, `rt:{<channel>}...`, so that on Redis Cluster all
of one channel's keys and its sharded pub/sub name live in one slot.
"""

from __future__ import annotations

import re

BROADCAST = "broadcast"
SESSION_PREFIX = "session:"
USER_PREFIX = "user:"

# No braces (hash tags), quotes, backslashes or white space: a valid name needs no escaping
# in JSON or in a Redis key.
_CHANNEL = re.compile(r"(?:broadcast|(?:session|user):[A-Za-z0-9._@|+=-]{1,128})")


class InvalidChannel(ValueError):
    """The name is not a channel this product knows."""


def validate_channel(name: object) -> str:
    if not isinstance(name, str) or not _CHANNEL.fullmatch(name):
        raise InvalidChannel(
            "channel must be 'broadcast', 'session:<id>' or 'user:<id>' "
            "(id: 1-128 of A-Z a-z 0-9 . _ @ | + = -)"
        )
    return name


def user_channel(user_id: str) -> str:
    return validate_channel(USER_PREFIX + user_id)


def session_channel(session_id: str) -> str:
    return validate_channel(SESSION_PREFIX + session_id)


def pubsub_name(channel: str) -> str:
    """The Redis pub/sub channel that carries `channel`."""
    return f"rt:{{{channel}}}"


def meta_key(channel: str) -> str:
    """Hash with the channel's last `offset` and its `epoch`."""
    return f"rt:{{{channel}}}:meta"


def history_key(channel: str) -> str:
    """Stream with the channel's bounded history; entry id `<offset>-0`, field `d`."""
    return f"rt:{{{channel}}}:history"


def idempotency_key(channel: str, key: str) -> str:
    """Hash `offset`, `epoch`, `digest` of the publication that used idempotency `key` on
    `channel`; it expires after the idempotency window."""
    return f"rt:{{{channel}}}:idem:{key}"


def presence_key(channel: str) -> str:
    """Sorted set client id -> expiry time, with details in `presence_info_key`."""
    return f"rt:{{{channel}}}:presence"


def presence_info_key(channel: str) -> str:
    return f"rt:{{{channel}}}:presence:info"


def presence_users_key(channel: str) -> str:
    """Hash user id -> how many of the channel's present clients are that user's."""
    return f"rt:{{{channel}}}:presence:users"


def channel_of_pubsub(name: str) -> str | None:
    """Inverse of pubsub_name; None for a name that is not ours."""
    if name.startswith("rt:{") and name.endswith("}"):
        return name[4:-1]
    return None
