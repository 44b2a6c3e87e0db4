"""Publishing for backends: validate once, then append to history and fan out.

    async with connect_publisher("redis://localhost:6379/0") as publisher:
        await publisher.publish("session:abc", WorkflowUpdate(session_id="abc", ...))

`connect_publisher` talks to Redis (or a Redis Cluster, `redis+cluster://host:port,...`)
directly, through the same publish script the gateways use: the event lands in the channel's
history and reaches every subscribed client, or neither. The gateway publishes with the same
`Publisher` over its own broker.

A publish that may be retried (a timeout, a `PublishError`: it may or may not have happened)
carries an idempotency key; the retry then publishes nothing if the first one did:

    await publisher.publish("session:abc", update, idempotency_key="run-42-design-done")
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, TypeAdapter

from archmesh_client.channels import validate_channel
from archmesh_client.history_page import Entry, read_page
from archmesh_client.idempotency import (
    DEFAULT_WINDOW,
    Idempotency,
    InvalidIdempotencyKey,
    validate_idempotency_key,
)
from archmesh_client.redis_transport import RedisTransport
from archmesh_client.retention import HistoryPolicy
from archmesh_client.stream import StreamPosition

# Compact JSON, NaN and infinities as null: text every client parses.
_JSON: TypeAdapter[Any] = TypeAdapter(Any)


class InvalidPublication(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Transport(Protocol):
    """Where a publisher's events go: the gateway's broker, or Redis for a backend."""

    async def publish(
        self, channel: str, data: str, idempotency: Idempotency | None = None
    ) -> StreamPosition:
        """Append `data` (a JSON object's text) to history and fan it out, atomically; with
        `idempotency`, only if its key was not used on the channel within its window (else
        the first publication's position, `duplicate=True`, or `IdempotencyConflict`)."""
        ...


class HistorySource(Protocol):
    """Where a publisher reads history from (Redis for a backend): a `history_page.Read`."""

    async def read_history(
        self, channel: str, since: int, limit: int
    ) -> tuple[list[Entry], StreamPosition]: ...


@dataclass(frozen=True, slots=True)
class HistoricPublication:
    """One publication of a history page: its position and its event."""

    offset: int
    epoch: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class History:
    """`Publisher.history`'s page, in page order, and the channel's position."""

    publications: list[HistoricPublication]
    position: StreamPosition


def encode_event(data: BaseModel | Mapping[str, Any], max_bytes: int) -> str:
    """The event's JSON text; it must be an object with a string `type`."""
    if isinstance(data, BaseModel):
        text = data.model_dump_json()
    elif isinstance(data, Mapping):
        if not isinstance(data.get("type"), str) or not data["type"]:
            raise InvalidPublication("bad_data", "data must have a non-empty string 'type'")
        try:
            text = _JSON.dump_json(data).decode()
        except (TypeError, ValueError) as exc:  # pydantic's serialization error is a ValueError
            raise InvalidPublication("bad_data", f"data is not JSON: {exc}") from exc
    else:
        raise InvalidPublication("bad_data", "data must be a JSON object")
    if len(text.encode()) > max_bytes:
        raise InvalidPublication("too_large", f"data exceeds {max_bytes} bytes")
    return text


class Publisher:
    """`await publisher.publish("session:abc", WorkflowUpdate(...))` from any backend."""

    def __init__(
        self,
        transport: Transport,
        max_bytes: int = 65536,
        idempotency_window: float = DEFAULT_WINDOW,
        history: HistorySource | None = None,
    ) -> None:
        self._transport = transport
        self._history = history
        self._max_bytes = max_bytes
        self._window = idempotency_window

    async def publish(
        self,
        channel: str,
        data: BaseModel | Mapping[str, Any],
        idempotency_key: str | None = None,
    ) -> StreamPosition:
        """The publication's position. With `idempotency_key`, a repeat of the key on the
        channel within the window publishes nothing and returns the first publication's
        position with `duplicate=True`; a repeat with a different event raises
        `IdempotencyConflict` (`archmesh_client.idempotency`)."""
        try:
            validate_channel(channel)
        except ValueError as exc:
            raise InvalidPublication("invalid_channel", str(exc)) from exc
        once = None
        if idempotency_key is not None:
            try:
                once = Idempotency(validate_idempotency_key(idempotency_key), self._window)
            except InvalidIdempotencyKey as exc:
                raise InvalidPublication("invalid_idempotency_key", str(exc)) from exc
        text = encode_event(data, self._max_bytes)
        if once is None:
            return await self._transport.publish(channel, text)
        return await self._transport.publish(channel, text, once)

    async def history(
        self,
        channel: str,
        limit: int,
        since: StreamPosition | None = None,
        reverse: bool = False,
    ) -> History:
        """A page of `channel`'s history (`archmesh_client.history_page`): at most `limit`
        publications after `since` oldest first, or with `reverse` before it newest first;
        `limit` 0: the position only; a `since` of an older epoch: an empty page. A failed
        read raises `HistoryError` (`archmesh_client.redis_transport`)."""
        if self._history is None:
            raise RuntimeError("this publisher has no history source")
        try:
            validate_channel(channel)
        except ValueError as exc:
            raise InvalidPublication("invalid_channel", str(exc)) from exc
        page = await read_page(self._history.read_history, channel, limit, since, reverse)
        epoch = page.position.epoch
        return History(
            [HistoricPublication(o, epoch, json.loads(d)) for o, d in page.publications],
            page.position,
        )


@asynccontextmanager
async def connect_publisher(
    redis_url: str,
    policy: HistoryPolicy | None = None,
    max_bytes: int = 65536,
    idempotency_window: float = DEFAULT_WINDOW,
) -> AsyncIterator[Publisher]:
    """A publisher with its own Redis connection, for a backend process. `policy` must be
    the gateways' history policy (ARCHMESH_HISTORY_*): the publish sets each channel's
    retention. `idempotency_window` is how long (seconds) an idempotency key is remembered.
    A failed publish raises `PublishError` (`archmesh_client.redis_transport`)."""
    transport = RedisTransport(redis_url, policy)
    try:
        yield Publisher(transport, max_bytes, idempotency_window, history=transport)
    finally:
        await transport.close()
