"""Revoked tokens in Redis: the key layout, and the reads and writes of it. Gateways read it at
connect, refresh and subscribe; backends (`archmesh_client.control`) and the gateways' control
API write it. Every key lives until what it revokes has expired, so the set never grows without
bound.

- `rt:revoked:token:<jti>`: a string, set until the token's `exp` (plus a margin): the token
  with this `jti` claim is refused.
- `rt:revoked:user:<user_id>`: a Unix time in seconds, set until that time plus the longest
  token lifetime: this user's tokens with an `iat` before it (or without `iat`) are refused.
  Written by `revoke_user.lua`, which keeps the latest cut-off and the latest expiry.

Each command touches one key, so the layout works unchanged on a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from typing import Any

REVOKE_USER_SOURCE = resources.files(__package__).joinpath("revoke_user.lua").read_text()


def token_revocation_key(jti: str) -> str:
    return f"rt:revoked:token:{jti}"


def user_revocation_key(user_id: str) -> str:
    return f"rt:revoked:user:{user_id}"


def is_revoked(issued_at: float | None, cut_off: float | None) -> bool:
    """Whether a token issued at `issued_at` (None: no `iat`) falls under a user's cut-off."""
    return cut_off is not None and (issued_at is None or issued_at < cut_off)


class RedisRevocations:
    """Revocations over a redis-py client (one server or a Cluster). Redis errors propagate:
    the caller says what a failure means to it."""

    def __init__(self, client: Any) -> None:
        self._redis = client
        self._revoke_user = client.register_script(REVOKE_USER_SOURCE)

    async def revoke_token(self, jti: str, until: float) -> None:
        """Refuse the token `jti` until `until` (Unix seconds); nothing when that has passed."""
        if until > time.time():
            await self._redis.set(token_revocation_key(jti), "1", pxat=int(until * 1000))

    async def revoke_user(self, user_id: str, before: float, until: float) -> None:
        """Refuse `user_id`'s tokens issued before `before`, until `until` (Unix seconds)."""
        key = user_revocation_key(user_id)
        await self._revoke_user(keys=[key], args=[repr(float(before)), int(until * 1000)])

    async def revoked(self, jti: str | None, user_id: str, issued_at: float | None) -> bool:
        """Whether a token (its `jti`, `sub` and `iat` claims) is revoked."""
        cut_off_read = self._redis.get(user_revocation_key(user_id))
        if jti is None:
            cut_off = await cut_off_read
            token = None
        else:  # two keys, maybe two cluster slots: two commands, in flight together
            cut_off, token = await asyncio.gather(
                cut_off_read, self._redis.get(token_revocation_key(jti))
            )
        return token is not None or is_revoked(issued_at, cutoff_seconds(cut_off))


def cutoff_seconds(value: bytes | str | None) -> float | None:
    """A user's cut-off as stored; one that is not a number revokes everything (not ours to
    parse: rather everything than nothing)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return float("inf")  # not ours to parse: revoke everything rather than nothing
