"""History pages at the gateway (the `history` frame, `GET /api/channels/{channel}/history`):
the client package's paging rule (`archmesh_client.history_page`) over the node's broker, at
most ARCHMESH_HISTORY_MAX_LIMIT publications a page."""

from __future__ import annotations

from typing import Any

import orjson
from archmesh_client.history_page import Entry, HistoryPage, Read, read_page
from archmesh_client.stream import StreamPosition

from gateway.context import HistoryRead


def _reader(history: HistoryRead) -> Read:
    async def read(channel: str, since: int, limit: int) -> tuple[list[Entry], StreamPosition]:
        found = await history(channel, since, limit)
        epoch = found.position.epoch
        entries = [
            (pub.offset, pub.data)
            for pub in found.publications
            if pub.offset is not None and pub.epoch == epoch
        ]
        return entries, found.position

    return read


async def history_page(
    history: HistoryRead,
    channel: str,
    limit: int,
    since: StreamPosition | None,
    reverse: bool,
    max_limit: int,
) -> HistoryPage:
    """Raises BrokerError when the broker cannot be read."""
    return await read_page(_reader(history), channel, min(limit, max_limit), since, reverse)


def page_fields(channel: str, page: HistoryPage) -> dict[str, Any]:
    """{channel, publications: [{offset, epoch, data}...], offset, epoch}; `data` is embedded
    as the JSON text it was published as."""
    epoch = page.position.epoch
    return {
        "channel": channel,
        "publications": [
            {"offset": offset, "epoch": epoch, "data": orjson.Fragment(data)}
            for offset, data in page.publications
        ],
        "offset": page.position.offset,
        "epoch": epoch,
    }
