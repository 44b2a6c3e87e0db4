"""When to ask for a token's successor: read from the token itself, never verified (the client
cannot and need not: the gateway verifies), and spread so that many clients holding tokens
minted in the same second do not all ask in the same second."""

from __future__ import annotations

import base64
import binascii
import json
import random
import time
from collections.abc import Callable
from typing import TypeGuard

# A refresh happens at a uniformly random point in this last part of a token's life.
RENEW_WINDOW: tuple[float, float] = (0.1, 0.3)


def token_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT (seconds since the epoch), or None if there is none."""
    times = _times(token)
    return times[1] if times is not None else None


def renew_delay(
    token: str, now: float | None = None, rng: Callable[[], float] = random.random
) -> float | None:
    """Seconds from `now` until the token should be renewed: a random point in the last
    10-30% of its life (from `iat`, or from `now` without one). None: it has no `exp`."""
    times = _times(token)
    if times is None:
        return None
    now = time.time() if now is None else now
    issued, expires = times
    start = issued if issued is not None and issued < expires else now
    low, high = RENEW_WINDOW
    before_exp = (expires - start) * (low + (high - low) * rng())
    return max(0.0, expires - before_exp - now)


def _times(token: str) -> tuple[float | None, float] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(claims, dict):
        return None
    expires, issued = claims.get("exp"), claims.get("iat")
    if not _is_number(expires):
        return None
    return (float(issued) if _is_number(issued) else None), float(expires)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
