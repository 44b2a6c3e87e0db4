"""Where a channel's history stands: what a publish returns and what a client resumes from."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a channel's history stands: the last offset given out, in this epoch.

    A publish returns its publication's position. `duplicate` is True when the publish repeated
    an earlier one's idempotency key: nothing was published, and the position is the earlier
    publication's. It is not part of the position: equal positions compare equal either way.
    """

    offset: int
    epoch: str
    duplicate: bool = field(default=False, compare=False)
