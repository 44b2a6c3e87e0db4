"""In-memory broker: the embedded default for one process, with Redis' semantics."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from archmesh_client.idempotency import Idempotency, IdempotencyConflict
from archmesh_client.retention import HistoryPolicy
from archmesh_client.stream import StreamPosition

from shared.broker.base import BrokerPublication, Handler, History, StateHandler
from shared.broker.reads import ReadCounts


def new_epoch() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(slots=True)
class _Stream:
    epoch: str
    offset: int = 0
    touched: float = 0.0
    entries: deque[BrokerPublication] = field(default_factory=deque)


@dataclass(frozen=True, slots=True)
class _Seen:
    """A publication made with an idempotency key, as publish.lua records it."""

    position: StreamPosition
    digest: str
    expires: float


class _SeenKeys:
    """Idempotency keys in use, each until its window ends; at most `limit` of them (the
    oldest are forgotten first), so a flood of keys cannot grow the process without bound."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: OrderedDict[tuple[str, str], _Seen] = OrderedDict()

    def get(self, channel: str, key: str, now: float) -> _Seen | None:
        while self._seen:  # in insertion order, which is expiry order for one window
            oldest = next(iter(self._seen.values()))
            if oldest.expires > now:
                break
            self._seen.popitem(last=False)
        seen = self._seen.get((channel, key))
        return seen if seen is not None and seen.expires > now else None

    def add(self, channel: str, key: str, seen: _Seen) -> None:
        self._seen[(channel, key)] = seen
        self._seen.move_to_end((channel, key))
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)


class MemoryBroker:
    """`idempotency_keys`: how many keys are remembered at once; beyond, the oldest are
    forgotten before their window ends."""

    def __init__(
        self, policy: HistoryPolicy | None = None, idempotency_keys: int = 100_000
    ) -> None:
        self._policy = policy or HistoryPolicy()
        self._streams: dict[str, _Stream] = {}
        self._seen = _SeenKeys(idempotency_keys)
        self._subscribed: set[str] = set()
        self._on_message: Handler | None = None
        self._read_counts = ReadCounts()

    @property
    def connected(self) -> bool:
        return True

    @property
    def history_reads(self) -> ReadCounts:
        return self._read_counts

    async def start(self, on_message: Handler, on_state: StateHandler | None = None) -> None:
        self._on_message = on_message
        if on_state is not None:
            on_state(True)

    async def close(self) -> None:
        self._on_message = None

    def _stream(self, channel: str) -> _Stream:
        ttl = self._policy.for_channel(channel).ttl
        stream = self._streams.get(channel)
        now = time.monotonic()
        if stream is None or now - stream.touched > ttl:
            # Expired history is lost history: a new epoch tells recovering clients so.
            stream = self._streams[channel] = _Stream(epoch=new_epoch(), touched=now)
        return stream

    async def publish(
        self, channel: str, data: str, idempotency: Idempotency | None = None
    ) -> StreamPosition:
        if idempotency is None:
            return self._append(channel, data)
        # No await between the check and the append: one atomic step, as in publish.lua.
        now = time.monotonic()
        digest = hashlib.sha1(data.encode(), usedforsecurity=False).hexdigest()
        seen = self._seen.get(channel, idempotency.key, now)
        if seen is not None:
            if seen.digest != digest:
                raise IdempotencyConflict()
            return StreamPosition(seen.position.offset, seen.position.epoch, duplicate=True)
        position = self._append(channel, data)
        self._seen.add(channel, idempotency.key, _Seen(position, digest, now + idempotency.window))
        return position

    def _append(self, channel: str, data: str) -> StreamPosition:
        stream = self._stream(channel)
        stream.offset += 1
        stream.touched = time.monotonic()
        publication = BrokerPublication(channel, data, stream.offset, stream.epoch)
        size = self._policy.for_channel(channel).size
        if size:
            stream.entries.append(publication)
            while len(stream.entries) > size:
                stream.entries.popleft()
        else:
            stream.entries.clear()
        if channel in self._subscribed and self._on_message is not None:
            self._on_message(publication)
        return StreamPosition(stream.offset, stream.epoch)

    async def signal(self, channel: str, frame: str) -> None:
        if channel in self._subscribed and self._on_message is not None:
            self._on_message(BrokerPublication(channel, frame, signal=True))

    async def publish_many(self, items: list[tuple[str, str]]) -> list[StreamPosition]:
        return [await self.publish(channel, data) for channel, data in items]

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    async def history(self, channel: str, since: int, limit: int) -> History:
        self._read_counts.asked += 1
        self._read_counts.issued += 1
        stream = self._stream(channel)
        position = StreamPosition(stream.offset, stream.epoch)
        first = stream.entries[0].offset if stream.entries else None
        first = stream.offset + 1 if first is None else first
        found = [p for p in stream.entries if p.offset is not None and p.offset > since][:limit]
        covered = 0 <= since <= stream.offset and since + 1 >= first
        reaches_head = since == stream.offset or (bool(found) and found[-1].offset == stream.offset)
        return History(found, position, covered and reaches_head)

    async def position(self, channel: str) -> StreamPosition:
        stream = self._stream(channel)
        return StreamPosition(stream.offset, stream.epoch)

    async def ping(self) -> bool:
        return True
