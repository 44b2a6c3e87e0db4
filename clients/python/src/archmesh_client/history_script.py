"""The history read script (history.lua) and how to call it: the one copy of both.

It returns a channel's position and the publications after an offset in one atomic step. The
gateway's Redis broker and a backend's `Publisher.history` load it from here, so both read
history with the same key layout and the same epoch rules (a channel without one gets one).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from archmesh_client.channels import history_key, meta_key
from archmesh_client.stream import StreamPosition

SOURCE = resources.files(__package__).joinpath("history.lua").read_text()


@dataclass(frozen=True, slots=True)
class HistoryReply:
    """The script's answer: publications (offset, data text) oldest first, all in the epoch of
    `position`, and the oldest offset still kept (None: nothing kept)."""

    entries: list[tuple[int, str]]
    position: StreamPosition
    first: int | None


def keys_and_args(channel: str, since: int, limit: int, ttl: float) -> tuple[list[str], list[Any]]:
    """`ttl`: the channel's history lifetime (seconds), given to a meta key made by the read."""
    return [meta_key(channel), history_key(channel)], [since, limit, int(ttl * 1000)]


def parse(reply: list[Any]) -> HistoryReply:
    offset, epoch, first = int(reply[0]), _text(reply[1]), int(reply[2])
    entries = reply[3:]
    return HistoryReply(
        [(int(entries[i]), _text(entries[i + 1])) for i in range(0, len(entries), 2)],
        StreamPosition(offset, epoch),
        None if first == -1 else first,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
