"""A thin SSE reader over an httpx stream: events as `(id, frame, name)`, comments counted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class SseEvent:
    id: str | None
    frame: dict[str, Any]
    name: str | None = None  # the `event` field: None for a plain message


@dataclass
class SseReader:
    response: httpx.Response
    lines: AsyncIterator[str]
    comments: list[str] = field(default_factory=list)
    last_id: str | None = None

    async def next(self, timeout: float = 5.0) -> SseEvent | None:
        """The next event; None when the stream ended."""
        async with asyncio.timeout(timeout):
            event_id: str | None = None
            name: str | None = None
            data: list[str] = []
            async for line in self.lines:
                if line == "":
                    if data:
                        if event_id is not None:
                            self.last_id = event_id
                        return SseEvent(event_id, json.loads("\n".join(data)), name)
                    continue
                field_name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field_name == "":
                    self.comments.append(value)
                elif field_name == "id":
                    event_id = value
                elif field_name == "event":
                    name = value
                elif field_name == "data":
                    data.append(value)
            return None

    async def next_type(self, kind: str, timeout: float = 5.0) -> SseEvent:
        while True:
            event = await self.next(timeout)
            assert event is not None, f"the stream ended before a {kind}"
            if event.frame["type"] == kind:
                return event


@asynccontextmanager
async def open_sse(
    base: str,
    token: str | None = None,
    channels: tuple[str, ...] = (),
    *,
    last_event_id: str | None = None,
    query_token: bool = False,
    headers: dict[str, str] | None = None,
    params: list[tuple[str, str]] | None = None,
) -> AsyncIterator[SseReader]:
    """`headers`, `params`: more of them (e.g. subscription tokens)."""
    params = [("channel", c) for c in channels] + (params or [])
    headers = dict(headers or {})
    if token is not None:
        if query_token:
            params.append(("token", token))
        else:
            headers["Authorization"] = f"Bearer {token}"
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client,
        client.stream("GET", f"{base}/sse", params=params, headers=headers) as response,
    ):
        yield SseReader(response, response.aiter_lines())
