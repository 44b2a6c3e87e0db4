"""Capped exponential backoff with full jitter, for every reconnect loop."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


def backoff_delay(
    attempt: int, base: float, cap: float, rng: Callable[[], float] = random.random
) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]; `attempt` counts from 0."""
    return rng() * min(cap, base * 2.0 ** min(max(attempt, 0), 60))


@dataclass(slots=True)
class Backoff:
    base: float = 0.1
    cap: float = 5.0
    attempt: int = 0

    def next_delay(self) -> float:
        delay = backoff_delay(self.attempt, self.base, self.cap)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
