"""One Redis step tried again in place, for a bounded time, where giving up at once would cost
more than waiting: a sent message whose record is lost is sent again when its lease ends, and
a batch left to be reclaimed waits a claim-idle. The step must be safe to run twice (a script
that finds its own record) or known not to have run (a refusal)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shared.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")


async def persist(
    step: Callable[[], Awaitable[T]],
    *,
    errors: tuple[type[BaseException], ...],
    patience: float,
    cap: float,
    event: str,
    **context: str,
) -> T:
    """`step()`, again after any of `errors` (each logged as `event` with `context`), waiting
    50 ms and then twice as long each time up to `cap`, for up to `patience` seconds; then
    the error is raised."""
    deadline = time.monotonic() + patience
    delay = 0.05
    while True:
        try:
            return await step()
        except errors as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning(event, error=type(exc).__name__, retry_in=delay, **context)
            await asyncio.sleep(delay)
            delay = min(delay * 2, cap)
