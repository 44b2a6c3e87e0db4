"""Cancelling notifications by `cancel_key`: the script (cancel.lua) and how to call it, the one
copy of both. The notifier's API and `NotifierClient.cancel` both run it, so a backend may
cancel through either; the notifiers' delivery jobs find cancelled steps and skip them.

The notifier keeps, per cancel key and partition, the set of notification ids that carried it
(for as long as their statuses are kept); cancelling walks that set in one atomic step per
partition (`request_stream.Partitioning`: each partition's keys share one Cluster slot)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ClusterError

from archmesh_client.notifications import Medium
from archmesh_client.request_stream import UNPARTITIONED, UNTAGGED_PREFIX, Partitioning

SOURCE = resources.files(__package__).joinpath("cancel.lua").read_text()

# The notifier's key layout this script touches (notifier/keys.py uses the same names), after
# a partition's prefix (`nt:` untagged, `nt:{<tag>}:` partitioned).
NOTIFICATION_PREFIX = "nt:n:"
DUE = "nt:due"
CANCEL_PREFIX = "nt:cancel:"
TIMELINE_PREFIX = "nt:log:"  # a notification's status changes (the operator console's timeline)
STATS_PREFIX = "nt:stats:"
STATS_TTL = 90 * 86400


def _in(prefix: str, name: str) -> str:
    """An untagged name (`nt:due`) in the partition whose keys start with `prefix`."""
    return prefix + name.removeprefix(UNTAGGED_PREFIX)


class CancelResult(BaseModel):
    cancel_key: str | None = None
    cancelled: int  # steps (one medium of one notification) that will now never be sent
    notifications: int  # notifications that had at least one such step


def index_key(cancel_key: str, prefix: str = UNTAGGED_PREFIX) -> str:
    return _in(prefix, f"{CANCEL_PREFIX}{cancel_key}")


def stats_key(moment: datetime, prefix: str = UNTAGGED_PREFIX) -> str:
    return _in(prefix, f"{STATS_PREFIX}{moment.astimezone(UTC).strftime('%Y%m%d%H')}")


def due_key(prefix: str = UNTAGGED_PREFIX) -> str:
    return _in(prefix, DUE)


def payload(
    now: datetime,
    reason: str,
    *,
    cancel_key: str | None = None,
    ids: list[str] | None = None,
    only: Medium | None = None,
    states: list[str] | None = None,
    prefix: str = UNTAGGED_PREFIX,
) -> dict[str, Any]:
    """The script's argument (`run` encodes it): cancel what `cancel_key` names, or the
    notifications `ids` (all in the partition whose keys start with `prefix`); `states`
    narrows which steps count as not yet sent (default: every such state)."""
    body: dict[str, Any] = {
        "prefix": _in(prefix, NOTIFICATION_PREFIX),
        "due": due_key(prefix),
        "media": [m.value for m in Medium],
        "reason": reason,
        "now": now.isoformat(),
        "stats": stats_key(now, prefix),
        "stats_ttl": STATS_TTL,
        "ids": ids or [],
        "timeline": _in(prefix, TIMELINE_PREFIX),
    }
    if cancel_key is not None:
        body["index"] = index_key(cancel_key, prefix)
    if only is not None:
        body["only"] = only.value
    if states is not None:
        body["states"] = states
    return body


async def cancel(
    redis: aioredis.Redis,
    cancel_key: str,
    now: datetime | None = None,
    layout: Partitioning = UNPARTITIONED,
) -> CancelResult:
    """Cancel every step not yet sent of the notifications that carried `cancel_key`, one
    partition after the other (each partition atomically)."""
    moment = now or datetime.now(UTC)
    steps = touched = 0
    for partition in range(layout.partitions):
        prefix = layout.prefix(partition)
        body = payload(moment, "cancelled by request", cancel_key=cancel_key, prefix=prefix)
        cancelled, notifications = await run(redis, body)
        steps, touched = steps + cancelled, touched + notifications
    return CancelResult(cancel_key=cancel_key, cancelled=steps, notifications=touched)


class CancelRaced(ClusterError):
    """A Cluster cancel found other notifications or digests than it had read, every time: as
    redis-py's own "TTL exhausted", nothing was changed and it may be sent again."""


_RACES = 5  # a cancel re-read that often loses to requests still arriving with its key


async def run(
    redis: aioredis.Redis, p: dict[str, Any], script: AsyncScript | None = None
) -> tuple[int, int]:
    """Run the script on `p` (from `payload`): (steps cancelled, notifications touched).

    One Redis: its only key is the partition's due set. A Cluster also needs every key the
    script touches declared, or while the partition's slot migrates between masters it would
    run where some of them are not (reading a notification that has moved as absent, and
    reporting it cancelled though its steps go on): so it first reads the ids (the cancel
    key's index) and their open digests, declares their keys, and the script checks that
    nothing changed between (then it is read again). `script`: SOURCE registered on `redis`
    once by a caller that cancels often."""
    script = script or redis.register_script(SOURCE)
    if not isinstance(redis, RedisCluster):
        reply = await script(keys=[p["due"]], args=[_encode(p)])
        return int(reply[0]), int(reply[1])
    for _ in range(_RACES):
        ids = sorted(await redis.smembers(p["index"])) if p.get("index") else p["ids"]
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
        digests = await _digests(redis, p["prefix"], ids)
        declared = [p["due"], p["stats"], *([p["index"]] if p.get("index") else [])]
        for nid, dg in zip(ids, digests, strict=True):
            declared += [p["prefix"] + nid, p["timeline"] + nid]
            if dg:
                where = json.loads(dg)
                declared += [where["events"], where["data"]]
        checked = {**p, "ids": ids, "expect": digests}
        reply = await script(keys=list(dict.fromkeys(declared)), args=[_encode(checked)])
        if int(reply[0]) >= 0:
            return int(reply[0]), int(reply[1])
    raise CancelRaced(f"the cancel of {p.get('index') or len(ids)} kept racing new requests")


async def _digests(redis: aioredis.Redis, prefix: str, ids: list[str]) -> list[str]:
    """Each notification's open digest (its `dg` field), "" for none."""
    if not ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for nid in ids:
            pipe.hget(prefix + nid, "dg")
        found = await pipe.execute()
    return [(v.decode() if isinstance(v, bytes) else v) or "" for v in found]


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
