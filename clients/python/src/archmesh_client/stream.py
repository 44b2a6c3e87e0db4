"""Where a channel's history stands: what a publish returns and what a client resumes from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a channel's history stands: the last offset given out, in this epoch."""

    offset: int
    epoch: str
