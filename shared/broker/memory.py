"""In-memory broker: the embedded default for one process, with Redis' semantics."""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from archmesh_client.retention import HistoryPolicy
from archmesh_client.stream import StreamPosition

from shared.broker.base import BrokerPublication, Handler, History, StateHandler


def new_epoch() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(slots=True)
class _Stream:
    epoch: str
    offset: int = 0
    touched: float = 0.0
    entries: deque[BrokerPublication] = field(default_factory=deque)


class MemoryBroker:
    def __init__(self, policy: HistoryPolicy | None = None) -> None:
        self._policy = policy or HistoryPolicy()
        self._streams: dict[str, _Stream] = {}
        self._subscribed: set[str] = set()
        self._on_message: Handler | None = None

    @property
    def connected(self) -> bool:
        return True

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

    async def publish(self, channel: str, data: str) -> StreamPosition:
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

    async def publish_many(self, items: list[tuple[str, str]]) -> list[StreamPosition]:
        return [await self.publish(channel, data) for channel, data in items]

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    async def history(self, channel: str, since: int, limit: int) -> History:
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
