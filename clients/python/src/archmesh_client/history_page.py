"""A page of a channel's history, forwards or in reverse: the one rule behind the gateway's
`history` frame, its HTTP history API and a backend's `Publisher.history`.

Forwards, a page holds the publications after `since` (after nothing: from the oldest kept),
oldest first; in reverse, those before `since` (before nothing: from the newest), newest first.
Either way at most `limit`, and the channel's position with them. A `since` of another epoch
than the channel's gets an empty page and the position: that history is gone, and the position
is where the caller stands now. `limit` 0 asks for the position only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from archmesh_client.stream import StreamPosition

# (offset, data JSON text) of one publication.
Entry = tuple[int, str]
# (channel, since, limit) -> publications after `since` oldest first, all in the epoch of the
# position returned with them.
Read = Callable[[str, int, int], Awaitable[tuple[list[Entry], StreamPosition]]]


@dataclass(frozen=True, slots=True)
class HistoryPage:
    publications: list[Entry]  # in page order: oldest first, or newest first in reverse
    position: StreamPosition  # the channel's position when read


def same_epoch(since: StreamPosition, position: StreamPosition) -> bool:
    """Whether `since` is a position of the channel's current history (offset 0 with no
    epoch is the start of any)."""
    return since.epoch == position.epoch or (since.offset == 0 and not since.epoch)


async def read_page(
    read: Read, channel: str, limit: int, since: StreamPosition | None, reverse: bool
) -> HistoryPage:
    if limit < 0:
        raise ValueError("limit must be >= 0")
    if limit == 0:
        _, position = await read(channel, 0, 0)
        return HistoryPage([], position)
    if not reverse:
        entries, position = await read(channel, since.offset if since else 0, limit)
        if since is not None and not same_epoch(since, position):
            return HistoryPage([], position)
        return HistoryPage(entries, position)
    if since is None:
        _, head = await read(channel, 0, 0)
        upper = head.offset + 1
    else:
        head, upper = None, since.offset
    start = max(0, upper - 1 - limit)
    count = upper - 1 - start
    entries, position = (
        await read(channel, start, count) if count > 0 else await read(channel, 0, 0)
    )
    if since is not None and not same_epoch(since, position):
        return HistoryPage([], position)
    if head is not None and head.epoch != position.epoch:
        return HistoryPage([], position)  # the history was reset between the two reads
    page = [entry for entry in entries if entry[0] < upper]
    page.reverse()
    return HistoryPage(page, head or position)
