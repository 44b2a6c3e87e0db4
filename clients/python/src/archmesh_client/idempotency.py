"""Idempotency keys: a publish that carries one happens once, however often it is retried.

A repeat of a key on the same channel within the window publishes nothing and answers the
first publication's position (`StreamPosition.duplicate` is then True); a repeat with a
different event is refused (`IdempotencyConflict`), since answering the first one's position
would hide that the caller's event was never published. The check and the publish are one
atomic step in the publish script (and in the embedded broker), so two retries racing on two
gateway nodes still publish once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Printable, no spaces, braces or quotes: a key needs no escaping in an HTTP header, in JSON or
# in a Redis key name, and cannot move the channel's hash tag.
_KEY = re.compile(r"[A-Za-z0-9._~:@|+=/-]{1,128}")
KEY_RULE = "1-128 of A-Z a-z 0-9 . _ ~ : @ | + = / -"

DEFAULT_WINDOW = 300.0


class InvalidIdempotencyKey(ValueError):
    """The key is not one this product accepts (see `KEY_RULE`)."""


class IdempotencyConflict(RuntimeError):
    """The key was already used on this channel, within the window, for a different event."""

    code = "idempotency_conflict"

    def __init__(
        self, message: str = "the idempotency key was used for a different event on this channel"
    ) -> None:
        super().__init__(message)


def validate_idempotency_key(key: object) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidIdempotencyKey(f"idempotency key must be {KEY_RULE}")
    return key


@dataclass(frozen=True, slots=True)
class Idempotency:
    """One publish's key, and how long (seconds) a repeat of it is recognised."""

    key: str
    window: float = DEFAULT_WINDOW

    @property
    def window_ms(self) -> int:
        return max(1, round(self.window * 1000))
