"""Publishing for backends: validate once, then append to history and fan out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import orjson
from pydantic import BaseModel

from shared.broker import Broker, HistoryPolicy, StreamPosition, create_broker
from shared.channels import validate_channel


class InvalidPublication(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def encode_event(data: BaseModel | Mapping[str, Any], max_bytes: int) -> str:
    """The event's JSON text; it must be an object with a string `type`."""
    if isinstance(data, BaseModel):
        text = data.model_dump_json()
    elif isinstance(data, Mapping):
        if not isinstance(data.get("type"), str) or not data["type"]:
            raise InvalidPublication("bad_data", "data must have a non-empty string 'type'")
        try:
            text = orjson.dumps(data).decode()
        except TypeError as exc:
            raise InvalidPublication("bad_data", f"data is not JSON: {exc}") from exc
    else:
        raise InvalidPublication("bad_data", "data must be a JSON object")
    if len(text.encode()) > max_bytes:
        raise InvalidPublication("too_large", f"data exceeds {max_bytes} bytes")
    return text


class Publisher:
    """`await publisher.publish("session:abc", WorkflowUpdate(...))` from any backend."""

    def __init__(self, broker: Broker, max_bytes: int = 65536) -> None:
        self._broker = broker
        self._max_bytes = max_bytes

    async def publish(self, channel: str, data: BaseModel | Mapping[str, Any]) -> StreamPosition:
        try:
            validate_channel(channel)
        except ValueError as exc:
            raise InvalidPublication("invalid_channel", str(exc)) from exc
        return await self._broker.publish(channel, encode_event(data, self._max_bytes))


@asynccontextmanager
async def connect_publisher(
    redis_url: str, policy: HistoryPolicy | None = None, max_bytes: int = 65536
) -> AsyncIterator[Publisher]:
    """A publisher with its own Redis connection, for a backend process."""
    broker = create_broker(redis_url, policy)
    try:
        yield Publisher(broker, max_bytes)
    finally:
        await broker.close()
