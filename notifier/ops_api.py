"""The notifier's operations API (`/api/ops/*`), what the operator console shows and steers:
the request stream's backlog, the dead letters (read, requeue, discard), and a notification's
timeline. Auth: the API key or an admin token (shared/admin_auth.py); a user token gets 403.

Requeue and discard run dead_letter.lua: an entry is handled only if it is still in the dead
letter stream and is removed in the same step, so two operators (or two clicks) requeue it
once. "All" means every entry there when the call began (taken in pages), not the ones that
fail again meanwhile."""

from __future__ import annotations

from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from archmesh_client.notifications import REQUEST_FIELD
from pydantic import BaseModel, SecretStr
from redis.exceptions import ResponseError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notifier import keys
from notifier.ops_models import (
    DeadLetters,
    Discarded,
    DiscardedAll,
    Queue,
    Requeued,
    RequeuedAll,
    Timeline,
)
from notifier.status import StatusStore
from shared.admin_auth import AdminTokens, require_admin
from shared.http_errors import ApiError
from shared.lua import lua
from shared.openapi import Param, operation

PAGE = 100  # dead letters per page, and per script call of a requeue or discard of all
_OPS: dict[str, Any] = {"errors": (403,), "tag": "operations"}
_ENTRY = "a dead letter's id, e.g. 1700000000000-0"
_PARTITION = Param("partition", "the dead letter's partition (default 0)", "integer")


def _model(answer: BaseModel) -> Response:
    return Response(answer.model_dump_json(), media_type="application/json")


class OpsParts(Protocol):
    """What the API needs of the notifier (notifier.app.Notifier)."""

    redis: aioredis.Redis
    statuses: StatusStore


class OpsApi:
    def __init__(self, parts: OpsParts, key: SecretStr | None, tokens: AdminTokens) -> None:
        self._redis = parts.redis
        self._statuses = parts.statuses
        self._key = key
        self._tokens = tokens
        self._script = parts.redis.register_script(lua("notifier.scripts", "dead_letter.lua"))

    @property
    def routes(self) -> list[Route]:
        dead = "/api/ops/dead-letters"
        return [
            Route("/api/ops/queue", self.queue, methods=["GET"]),
            Route(dead, self.dead_letters, methods=["GET"]),
            Route(f"{dead}/requeue", self.requeue_all, methods=["POST"]),
            Route(f"{dead}/discard", self.discard_all, methods=["POST"]),
            Route(f"{dead}/{{entry}}/requeue", self.requeue_one, methods=["POST"]),
            Route(f"{dead}/{{entry}}", self.discard_one, methods=["DELETE"]),
            Route("/api/ops/notifications/{id}/timeline", self.timeline, methods=["GET"]),
        ]

    def _auth(self, request: Request) -> None:
        require_admin(request, self._key, self._tokens)

    @operation("The request streams' backlog: lag, pending, consumers", response=Queue, **_OPS)
    async def queue(self, request: Request) -> Response:
        """Each partition's request stream, its group (XINFO GROUPS), consumers and oldest
        pending entries (XPENDING): how far behind the notifiers are, and who holds what."""
        self._auth(request)
        found = [await self._partition(p) for p in keys.partitions()]
        dead = due = 0
        for partition in keys.partitions():
            dead += await self._redis.xlen(keys.dead_letters(partition))
            due += await self._redis.zcard(keys.due(partition))
        answer = {"partitions": found, "dead_letters": dead, "scheduled": due}
        return _model(Queue.model_validate(answer))

    async def _partition(self, partition: int) -> dict[str, Any]:
        stream = keys.requests(partition)
        length = await self._redis.xlen(stream)
        try:
            groups = await self._redis.xinfo_groups(stream)
        except ResponseError:  # no stream yet: nothing was ever queued
            groups = []
        group = next((g for g in groups if g["name"] == keys.GROUP), None)
        consumers: list[dict[str, Any]] = []
        oldest: list[dict[str, Any]] = []
        if group is not None:
            for c in await self._redis.xinfo_consumers(stream, keys.GROUP):
                consumers.append({"name": c["name"], "pending": c["pending"], "idle": c["idle"]})
            pending = await self._redis.xpending_range(
                stream, keys.GROUP, min="-", max="+", count=10
            )
            oldest = [
                {
                    "entry": p["message_id"],
                    "consumer": p["consumer"],
                    "idle_ms": p["time_since_delivered"],
                    "deliveries": p["times_delivered"],
                }
                for p in pending
            ]
        return {
            "partition": partition,
            "stream": stream,
            "group": keys.GROUP,
            "length": length,
            "lag": int(group.get("lag") or 0) if group else 0,
            "pending": int(group["pending"]) if group else 0,
            "consumers": consumers,
            "oldest_pending": oldest,
        }

    @operation(
        "A page of dead letters, oldest first, with each request, its reason and partition",
        response=DeadLetters,
        query=(
            Param("partition", "only this partition (needed to page with `after`)", "integer"),
            Param("after", "the `next` of the previous page of that partition"),
            Param("count", "at most this many (1-1000, default 100)", "integer"),
        ),
        **{**_OPS, "errors": (403, 422)},
    )
    async def dead_letters(self, request: Request) -> Response:
        """`?partition=&after=<entry id>&count=`: a page, oldest first. Without `partition`,
        the oldest `count` of every partition together (`next` is then for one partition
        only: ask that partition)."""
        self._auth(request)
        after = request.query_params.get("after")
        count = request.query_params.get("count", str(PAGE))
        if not count.isdigit() or not 1 <= int(count) <= 1000:
            raise ApiError(422, "validation_error", "count: an integer from 1 to 1000")
        chosen = request.query_params.get("partition")
        if chosen is None and after and len(keys.partitions()) > 1:
            raise ApiError(422, "validation_error", "after: page one partition (`partition`)")
        walked = [_partition_of(request)] if chosen is not None else list(keys.partitions())
        start = f"({_entry_id(after)}" if after else "-"
        items: list[dict[str, Any]] = []
        total = 0
        for partition in walked:
            stream = keys.dead_letters(partition)
            entries: Any = await self._redis.xrange(stream, min=start, max="+", count=int(count))
            items += [_dead_letter(entry_id, f, partition) for entry_id, f in entries]
            total += await self._redis.xlen(stream)
        items = sorted(items, key=lambda item: _order(item["id"]))[: int(count)]
        paged = len(walked) == 1 and len(items) == int(count)
        page = {"total": total, "items": items, "next": items[-1]["id"] if paged else None}
        return _model(DeadLetters.model_validate(page))

    @operation(
        "Requeue one dead letter (exactly once)",
        response=Requeued,
        path={"entry": _ENTRY},
        query=(_PARTITION,),
        **{**_OPS, "errors": (403, 404, 422)},
    )
    async def requeue_one(self, request: Request) -> Response:
        self._auth(request)
        entry = _entry_id(request.path_params["entry"])
        (done,) = await self._run("requeue", [entry], _partition_of(request))
        if not done:
            raise ApiError(404, "not_found", f"dead letter {entry}: requeued or discarded already")
        return _model(Requeued(id=entry, entry=done))

    @operation(
        "Discard one dead letter",
        response=Discarded,
        path={"entry": _ENTRY},
        query=(_PARTITION,),
        **{**_OPS, "errors": (403, 404, 422)},
    )
    async def discard_one(self, request: Request) -> Response:
        self._auth(request)
        entry = _entry_id(request.path_params["entry"])
        (done,) = await self._run("discard", [entry], _partition_of(request))
        if not done:
            raise ApiError(404, "not_found", f"dead letter {entry}: requeued or discarded already")
        return _model(Discarded(id=entry))

    @operation("Requeue every dead letter there now (each once)", response=RequeuedAll, **_OPS)
    async def requeue_all(self, request: Request) -> Response:
        self._auth(request)
        done = [await self._all("requeue", p) for p in keys.partitions()]
        return _model(RequeuedAll(requeued=sum(done)))

    @operation("Discard every dead letter there now", response=DiscardedAll, **_OPS)
    async def discard_all(self, request: Request) -> Response:
        self._auth(request)
        done = [await self._all("discard", p) for p in keys.partitions()]
        return _model(DiscardedAll(discarded=sum(done)))

    async def _all(self, action: str, partition: int) -> int:
        """Every entry of one partition there now, a page per script call; entries handled by
        someone else meanwhile are not counted."""
        stream = keys.dead_letters(partition)
        last: Any = await self._redis.xrevrange(stream, count=1)
        if not last:
            return 0
        end: str = last[0][0]
        start, handled = "-", 0
        while True:
            page: Any = await self._redis.xrange(stream, min=start, max=end, count=PAGE)
            if not page:
                return handled
            ids: list[str] = [entry_id for entry_id, _ in page]
            handled += sum(1 for done in await self._run(action, ids, partition) if done)
            start = f"({ids[-1]}"

    async def _run(self, action: str, ids: list[str], partition: int) -> list[str]:
        keys_ = [keys.dead_letters(partition), keys.requests(partition)]  # one slot
        reply = await self._script(keys=keys_, args=[action, REQUEST_FIELD, *ids])
        return [r.decode() if isinstance(r, bytes) else str(r) for r in reply]

    @operation(
        "A notification's timeline: every status change of every medium, and its status",
        response=Timeline,
        path={"id": "the notification id"},
        **{**_OPS, "errors": (403, 404, 422)},
    )
    async def timeline(self, request: Request) -> Response:
        """Every status change of every medium of one notification, oldest first, with its
        time and reason; and the current status. 404 once both expired (or never existed)."""
        self._auth(request)
        notification_id = request.path_params["id"]
        if len(notification_id) > 128:
            raise ApiError(422, "validation_error", "id: at most 128 characters")
        async with self._redis.pipeline(transaction=False) as pipe:  # the id says no partition
            for partition in keys.partitions():
                pipe.lrange(keys.timeline(notification_id, partition), 0, -1)
            logs: list[Any] = await pipe.execute()
        raw: list[Any] = next((log for log in logs if log), [])
        status = await self._statuses.get(notification_id)
        if status is None and not raw:
            raise ApiError(404, "not_found", f"no notification {notification_id} (or expired)")
        events = []
        for item in raw:
            entry = orjson.loads(item)
            delivery = entry["delivery"]
            events.append(
                {
                    "at": delivery.get("updated_at"),
                    "medium": entry["medium"],
                    "status": delivery.get("status"),
                    "attempts": delivery.get("attempts"),
                    "reason": delivery.get("last_error"),
                    "next_attempt_at": delivery.get("next_attempt_at"),
                }
            )
        found = {"id": notification_id, "status": status, "events": events}
        return _model(Timeline.model_validate(found))


def _entry_id(text: str) -> str:
    """A stream entry id (`<ms>-<seq>`); anything else is refused before Redis sees it."""
    ms, dash, seq = text.partition("-")
    if not (ms.isdigit() and len(ms) <= 20 and dash and seq.isdigit() and len(seq) <= 20):
        raise ApiError(422, "validation_error", "a dead letter id looks like 1700000000000-0")
    return text


def _partition_of(request: Request) -> int:
    text = request.query_params.get("partition", "0")
    if not text.isdigit() or int(text) not in keys.partitions():
        raise ApiError(422, "validation_error", f"partition: 0 to {len(keys.partitions()) - 1}")
    return int(text)


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def _dead_letter(entry_id: str, fields: dict[str, str], partition: int) -> dict[str, Any]:
    raw = fields.get("request", "")
    try:
        request: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        request = raw
    failed_at = fields.get("failed_at", "")
    return {
        "id": entry_id,
        "partition": partition,
        "request": request,
        "reason": fields.get("reason", ""),
        "entry": fields.get("entry"),
        "failed_at": int(failed_at) if failed_at.isdigit() else None,
    }
