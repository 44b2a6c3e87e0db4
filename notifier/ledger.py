"""The two scripts that make a batch of requests cheap and atomic: one call reads what the
batch needs (and locks it), one call records every outcome and acknowledges every entry.

Per-command overhead in the client, not Redis, bounds the notifier's throughput, so a batch
of hundreds of requests costs two round trips instead of a dozen commands per request."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from archmesh_client.notifications import REQUEST_FIELD
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, ClusterError, TryAgainError

from notifier import analytics, keys
from notifier.events import notification_prefix
from notifier.intake import Entry
from notifier.live import LiveChannels, with_publish
from notifier.persist import persist
from notifier.schemas import InboxCounts, InboxItem
from shared.lua import lua


@dataclass(frozen=True, slots=True)
class Found:
    exists: bool
    locked: bool
    preferences: str | None
    admitted: bool = True  # by the type's throttle (always, without one)
    opener: bool = False  # the first event of its digest window, which the rule sends at once


@dataclass(frozen=True, slots=True)
class Asked:
    """One request of a batch to prepare: its throttle and digest specs, when its type has."""

    id: str
    user_id: str
    throttle: dict[str, Any] | None = None
    digest: dict[str, Any] | None = None


@dataclass(slots=True)
class Outcome:
    """What one commit records: entries of one partition, whose keys it touches."""

    partition: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)
    acks: list[str] = field(default_factory=list)
    dead_letters: list[list[str]] = field(default_factory=list)
    stats: Counter[tuple[str, str]] = field(default_factory=Counter)
    # item index -> (user id, its in-app event without the counts)
    published: dict[int, tuple[str, str]] = field(default_factory=dict)
    # a batch counts many outcomes at one moment: its analytics bucket key, found once
    _buckets: dict[datetime, str] = field(default_factory=dict, repr=False)

    def record(
        self,
        entry: Entry,
        notification_id: str,
        fields: dict[str, str],
        due: dict[str, int],
        inbox: tuple[str, InboxItem] | None,
        owner: tuple[str, datetime] | None = None,
        *,
        cancel_key: str | None = None,
        collect: dict[str, Any] | None = None,
    ) -> None:
        """`owner`: the user and creation time, indexed for an erasure; `collect`: the event
        joins its digest window (see commit.lua). The script builds the notification's,
        lock's, timeline's, owner index's and inbox's key names from the batch's prefixes and
        the item's id and user (every user of the batch is of its partition)."""
        item: dict[str, Any] = {
            "id": notification_id,
            "fields": [x for pair in fields.items() for x in pair],
            "due": [x for member, score in due.items() for x in (score, member)],
            "entry": entry.id,
        }
        if cancel_key is not None:
            item["cancel"] = keys.cancel_index(cancel_key, self.partition)
        if collect is not None:
            item["collect"] = collect
        if owner is not None:
            item["user"], created = owner
            item["owner"] = _ms(created)
        if inbox is not None:
            user_id, box = inbox
            if item.setdefault("user", user_id) != user_id or box.id != notification_id:
                raise ValueError("an inbox item is its notification's, for its owner")
            item["inbox"] = {
                "score": box.created_at.timestamp(),
                "payload": box.model_dump_json(exclude={"seen", "read", "archived"}),
            }
            self.published[len(self.items)] = (user_id, notification_prefix(box))
        self.items.append(item)

    def dead_letter(self, entry: Entry, reason: str) -> None:
        request = entry.fields.get(REQUEST_FIELD) or repr(entry.fields)[:10000]
        failed_at = str(int(time.time() * 1000))
        self.dead_letters.append([entry.id, request, reason[:4000], failed_at])

    def count(
        self, moment: datetime, kind: str, channel: str, status: str, reason: str | None = None
    ) -> None:
        bucket = self._buckets.get(moment)
        if bucket is None:
            bucket = self._buckets[moment] = keys.stats(analytics.hour_of(moment), self.partition)
        self.stats[(bucket, analytics.field(kind, channel, status, reason))] += 1

    def __bool__(self) -> bool:
        return bool(self.items or self.acks or self.dead_letters)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


# Both scripts name their keys in ARGV, but on a Cluster declare them in KEYS too (the scripts
# do not read KEYS): while a partition's slot migrates between Cluster masters, Redis runs a
# script only on the node that holds every declared key (elsewhere it answers ASK or TRYAGAIN,
# which the cluster client follows and retries), so a script never writes half a user's keys
# on the old master and half on the new one (a split inbox, a status the other node cannot
# see). Keys whose names the script reads from Redis (an open digest window's) cannot be
# declared. One Redis has no slots to migrate: there the scripts get one key, and the client
# does not encode (nor Redis parse) a dozen names per notification.


def _unique(names: list[str | None]) -> list[str]:
    return list(dict.fromkeys(name for name in names if name))


def prepared_keys(payload: dict[str, Any]) -> list[str]:
    names: list[str | None] = [payload["due"]]
    for r in payload["requests"]:
        names += [payload["n"] + r["id"], payload["lock"] + r["id"], payload["prefs"] + r["user"]]
        if throttle := r.get("throttle"):
            names.append(throttle["key"])
        if digest := r.get("digest"):
            names += [digest["pointer"], digest["window_prefix"] + digest["id"]]
    return _unique(names)


def committed_keys(payload: dict[str, Any]) -> list[str]:
    names: list[str | None] = [payload[k] for k in ("due", "stream", "attempts", "dead")]
    n, lock, timeline = payload["n"], payload["lock"], payload["tl"]
    owners, ending = payload["owners"]
    for it in payload["items"]:
        names += [n + it["id"], lock + it["id"], timeline + it["id"], it.get("cancel")]
        if "owner" in it:
            names.append(owners + it["user"] + ending)
        if "inbox" in it:
            box = payload["inbox"] + it["user"]
            names += [box, *(box + suffix for suffix in _INBOX_SUFFIXES)]
        names.append(((it.get("collect") or {}).get("digest") or {}).get("pointer"))
    names += [key for key, _, _ in payload["stats"]]
    return _unique(names)


# keys.InboxKeys after the order's name, as commit.lua builds them
_INBOX_SUFFIXES = (":items", ":unread", ":unseen", ":archived")


@dataclass(frozen=True, slots=True)
class Staged:
    """A commit ready to send: its declared keys and its argument."""

    keys: list[str]
    payload: bytes


_PUBLICATIONS_MAX = 4_096  # about 0.5 KB each: a topic of 100,000 once held 25 MB here


# A Cluster's refusals that prove a script did not run: every attempt of redis-py's met
# TRYAGAIN (a multi-key script while its slot migrates, until the move ends), a redirection,
# or CLUSTERDOWN (a failover). Not a connection error: a script sent may have run.
_NOT_RUN = (ClusterError, TryAgainError, ClusterDownError)


class Ledger:
    def __init__(
        self,
        redis: aioredis.Redis,
        retention: float,
        inbox_size: int,
        live: LiveChannels | None = None,
        patience: float = 0.0,
    ) -> None:
        """With `live`, the commit also publishes each new in-app item on its user's channel
        (notifier/live.py); without, the caller publishes them after. `patience` (seconds):
        how long a script the Cluster refused without running it is tried again, in place;
        less than the batch's locks last (they keep other replicas off it meanwhile)."""
        self._redis = redis
        self._patience = patience
        self._declare = isinstance(redis, RedisCluster)  # every key in KEYS (see above)
        self._retention = int(retention)
        self._inbox_size = inbox_size
        self.live = live
        self._publications_of: dict[str, dict[str, str | int]] = {}
        self._prepare = redis.register_script(lua("notifier.scripts", "prepare.lua"))
        commit = lua("notifier.scripts", "commit.lua")
        self._commit = redis.register_script(with_publish(commit) if live else commit)

    def _publications(self, outcome: Outcome) -> list[dict[str, Any]]:
        """The items, each in-app one with where its event goes (when the commit publishes)."""
        if self.live is None:
            return outcome.items
        items = list(outcome.items)
        for index, (user_id, prefix) in outcome.published.items():
            publish = {**self._publication(user_id), "prefix": prefix}
            items[index] = {**items[index], "inbox": {**items[index]["inbox"], "publish": publish}}
        return items

    def _publication(self, user_id: str) -> dict[str, str | int]:
        """The user's channel keys and history policy: a channel name check (a regex) and a
        policy lookup each; a user's are the same every batch. Bounded, cleared whole."""
        assert self.live is not None
        found = self._publications_of.get(user_id)
        if found is None:
            if len(self._publications_of) >= _PUBLICATIONS_MAX:
                self._publications_of.clear()
            found = self._publications_of[user_id] = self.live.publication(user_id)
        return found

    async def prepare(
        self,
        owner: str,
        lock_seconds: float,
        requests: list[Asked],
        templates: list[str],
        now: datetime,
        partition: int = 0,
    ) -> tuple[list[Found], dict[str, str | None]]:
        """Per request: recorded already? locked by us? the user's preferences JSON; admitted
        by its throttle? the first of its digest window? Every request is of `partition`.
        Templates are in the script's slot only untagged; tagged, one MGET reads them."""
        tagged = keys.layout().tagged
        payload = {
            "owner": owner,
            "px": int(lock_seconds * 1000),
            "now": int(now.timestamp() * 1000),
            "due": keys.due(partition),
            "n": keys.notification("", partition),
            "lock": keys.lock("", partition),
            "prefs": keys.preferences_prefix(partition),
            "tpl": keys.template(""),
            "requests": [
                {
                    "id": r.id,
                    "user": r.user_id,
                    **({"throttle": r.throttle} if r.throttle else {}),
                    **({"digest": r.digest} if r.digest else {}),
                }
                for r in requests
            ],
            "templates": [] if tagged else templates,
        }
        declared = prepared_keys(payload) if self._declare else [keys.due(partition)]
        encoded = orjson.dumps(payload)
        reply = await self._until_run(lambda: self._prepare(keys=declared, args=[encoded]))
        if tagged and templates:
            reply = [*reply, *await self._redis.mget([keys.template(t) for t in templates])]
        n = len(requests)
        found = [
            Found(
                exists=bool(reply[5 * i]),
                locked=bool(reply[5 * i + 1]),
                preferences=reply[5 * i + 2],
                admitted=bool(reply[5 * i + 3]),
                opener=bool(reply[5 * i + 4]),
            )
            for i in range(n)
        ]
        return found, dict(zip(templates, reply[5 * n :], strict=True))

    async def commit(self, outcome: Outcome) -> list[InboxCounts]:
        """Record `outcome` atomically; the inbox counts after each of its inbox entries."""
        return await self.send(self.stage(outcome))

    async def send(self, staged: Staged) -> list[InboxCounts]:
        """Run a staged commit: the inbox counts after each of its inbox entries."""
        reply = await self._until_run(lambda: self._commit(keys=staged.keys, args=[staged.payload]))
        return [InboxCounts.model_construct(unseen=n, unread=m) for n, m in reply]  # ints

    async def _until_run(self, run: Callable[[], Awaitable[Any]]) -> Any:
        """`run()`, again while the Cluster refuses it without running it (a slot migrating:
        the batch goes on as soon as the move ends, instead of waiting for its entries to be
        reclaimed a claim-idle later), for up to `patience` seconds."""
        return await persist(
            run,
            errors=_NOT_RUN,
            patience=self._patience,
            cap=0.5,
            event="notifier_script_refused",
        )

    def stage(self, outcome: Outcome) -> Staged:
        """The commit of `outcome`, encoded (CPU only: done while another is in flight)."""
        part = outcome.partition
        payload = {
            "stream": keys.requests(part),
            "group": keys.GROUP,
            "n": keys.notification("", part),
            "lock": keys.lock("", part),
            "tl": keys.timeline("", part),
            "owners": keys.user_notifications_affixes(part),
            "inbox": keys.inbox_prefix(part),
            "attempts": keys.attempts(part),
            "dead": keys.dead_letters(part),
            "due": keys.due(part),
            "retention": self._retention,
            "inbox_size": self._inbox_size,
            "stats_ttl": analytics.RETENTION_SECONDS,
            "items": self._publications(outcome),
            "acks": outcome.acks,
            "dead_letters": outcome.dead_letters,
            "stats": [[key, name, n] for (key, name), n in outcome.stats.items()],
        }
        declared = committed_keys(payload) if self._declare else [keys.requests(part)]
        return Staged(declared, orjson.dumps(payload))
