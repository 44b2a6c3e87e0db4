"""Workflow rules: a workflow event that needs its owner becomes a notification.

Sessions to watch are registered with their owner (`PUT /api/sessions/{id}`). The watcher reads
each session channel's history from the last offset it handled, so nothing published while
every notifier was down is missed, and it works on every broker. Each event becomes a request
with a deterministic id (`wf.<session>.<epoch>.<offset>`), enqueued once across replicas.

Partitioned, the sessions are sharded like the users (`keys.sessions(shard)`), and the replica
holding a partition's lease (notifier/ownership.py) follows the sessions of its shard: each
session by one replica at a time. The position (offset, epoch) is saved after the events up
to it are enqueued, so a replica taking a shard over starts where the last one stopped; an
event both handled around a handover is enqueued once, by its marker (`keys.workflow_request`),
and a position written back late by the old holder only makes the new one read a few events
again, each enqueued once by its marker. So a handover misses no event and doubles none."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis
from archmesh_client.channels import session_channel
from archmesh_client.notifications import REQUEST_FIELD, NotificationRequest, Priority
from redis.exceptions import RedisError

from notifier import keys
from shared.broker import Broker, BrokerError, BrokerPublication
from shared.logging import get_logger
from shared.lua import lua

log = get_logger(__name__)

_TERMINAL = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class Rule:
    type: str
    priority: Priority


def parse_rules(spec: str) -> dict[str, Rule]:
    """`review_required=workflow_review_required:high,...` (status=type:priority)."""
    rules = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        status, sep, target = item.partition("=")
        kind, _, priority = target.partition(":")
        if not sep or not status or not kind:
            raise ValueError(f"bad rule {item!r}: expected status=notification_type[:priority]")
        rules[status.strip()] = Rule(kind.strip(), Priority(priority.strip() or "normal"))
    return rules


class WorkflowWatcher:
    def __init__(
        self,
        redis: aioredis.Redis,
        broker: Broker,
        rules: dict[str, Rule],
        retention: float,
        interval: float = 1.0,
        shards: Callable[[], Iterable[int]] | None = None,
    ) -> None:
        """`shards`: the session shards this replica follows now (default: every shard)."""
        self._shards = shards or keys.partitions
        self._redis = redis
        self._broker = broker
        self._rules = rules
        self._retention = int(retention)
        self._interval = interval
        self._enqueue = redis.register_script(lua("notifier.scripts", "enqueue_once.lua"))
        self._task: asyncio.Task[None] | None = None
        self._poke = asyncio.Event()

    async def watch(self, session_id: str, owner_id: str) -> None:
        # Start from the channel's current position: earlier events are not this owner's news.
        position = await self._broker.position(session_channel(session_id))
        state = {"owner": owner_id, "offset": position.offset, "epoch": position.epoch}
        await self._redis.hset(_sessions(session_id), session_id, orjson.dumps(state))
        self._poke.set()

    async def forget(self, session_id: str) -> None:
        await self._redis.hdel(_sessions(session_id), session_id)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="notifier-workflows")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.scan()
            except (RedisError, BrokerError, OSError) as exc:
                log.warning("workflow_scan_failed", error=str(exc))
            self._poke.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self._interval)

    async def scan(self) -> None:
        for shard in sorted(self._shards()):
            key = keys.sessions(shard)
            sessions: dict[str, str] = await self._redis.hgetall(key)  # type: ignore[assignment]
            for session_id, raw in sessions.items():
                if shard not in self._shards():
                    break  # handed over meanwhile: the new holder goes on from the position
                await self._follow(session_id, orjson.loads(raw))

    async def _follow(self, session_id: str, state: dict[str, object]) -> None:
        channel = session_channel(session_id)
        offset = state.get("offset")
        since = offset if isinstance(offset, int) else 0
        history = await self._broker.history(channel, since, 500)
        if history.position.epoch != state.get("epoch"):
            since = 0  # history was lost and restarted: what is there now is new
            history = await self._broker.history(channel, 0, 500)
        done = False
        for publication in history.publications:
            done = await self._handle(session_id, str(state["owner"]), publication) or done
        if done:
            await self._redis.hdel(_sessions(session_id), session_id)
            return
        last = history.publications[-1].offset if history.publications else since
        if last != offset or history.position.epoch != state.get("epoch"):
            state.update(offset=last, epoch=history.position.epoch)
            await self._redis.hset(_sessions(session_id), session_id, orjson.dumps(state))

    async def _handle(self, session_id: str, owner: str, publication: BrokerPublication) -> bool:
        """Enqueue a notification if a rule matches; True when the workflow has ended."""
        try:
            event = orjson.loads(publication.data)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(event, dict) or event.get("type") != "workflow_update":
            return False
        status = str(event.get("status", ""))
        rule = self._rules.get(status)
        if rule is not None:
            await self._notify(session_id, owner, publication, event, rule)
        return status in _TERMINAL

    async def _notify(
        self,
        session_id: str,
        owner: str,
        publication: BrokerPublication,
        event: dict[str, object],
        rule: Rule,
    ) -> None:
        stage = str(event.get("stage", "workflow"))
        status = str(event.get("status"))
        request = NotificationRequest(
            id=f"wf.{session_id}.{publication.epoch}.{publication.offset}"[:128],
            user_id=owner,
            type=rule.type,
            title=f"{stage}: {status.replace('_', ' ')}"[:200],
            body=str(event.get("message") or f"Session {session_id}"),
            priority=rule.priority,
            data={"session_id": session_id, "stage": stage, "status": status},
        )
        stream = keys.requests(keys.of_user(owner))
        added = await self._enqueue(
            [keys.workflow_request(request.id, owner), stream],
            [request.model_dump_json(), self._retention, REQUEST_FIELD],
        )
        if added:
            log.info("workflow_notification", session=session_id, status=status, id=request.id)


def _sessions(session_id: str) -> str:
    return keys.sessions(keys.shard_of_session(session_id))
