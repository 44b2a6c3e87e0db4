"""The publish script (publish.lua) and how to call it: the one copy of both.

The script appends an event to a channel's history and fans it out in one atomic step, at most
once per idempotency key. The backend publisher (`archmesh_client.publisher`) and the gateway's
Redis broker load it from here, so whatever publishes, the history and the live stream agree.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from redis.exceptions import ResponseError

from archmesh_client.channels import history_key, idempotency_key, meta_key
from archmesh_client.idempotency import Idempotency, IdempotencyConflict
from archmesh_client.retention import Retention
from archmesh_client.stream import StreamPosition

SOURCE = resources.files(__package__).joinpath("publish.lua").read_text()

# In the script's error reply when an idempotency key was used for a different event.
CONFLICT = "idempotency_conflict"


def keys_and_args(
    channel: str,
    data: str,
    retention: Retention,
    *,
    sharded: bool,
    idempotency: Idempotency | None = None,
) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of one publish; `sharded` fans out with SPUBLISH (Redis Cluster)."""
    keys = [meta_key(channel), history_key(channel)]
    args: list[str | int] = [
        data,
        retention.size,
        int(retention.ttl * 1000),
        "1" if sharded else "0",
    ]
    if idempotency is not None:
        keys.append(idempotency_key(channel, idempotency.key))
        args.append(idempotency.window_ms)
    return keys, args


def position(reply: Any) -> StreamPosition:
    """The script's reply `{offset, epoch}`, or `{offset, epoch, 1}` for a repeat of an
    idempotency key (as redis-py returns it: int, bytes)."""
    offset, epoch, *repeat = reply
    return StreamPosition(int(offset), epoch.decode(), duplicate=bool(repeat))


def conflict(error: BaseException) -> IdempotencyConflict | None:
    """The script's refusal of a key reused for a different event, from the error redis-py
    raised; None for any other error."""
    if isinstance(error, ResponseError) and CONFLICT in str(error):
        return IdempotencyConflict()
    return None
