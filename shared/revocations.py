"""The revocation store: which tokens a node must refuse although they verify (revoked by a
`jti`, or by a user's cut-off on `iat`), in Redis for every node, or in memory for the embedded
broker. Chosen from the same URL as the broker (`shared.broker.backend_of`).

Entries expire with what they revoke (the key layout and the TTL rule are the client
package's, `archmesh_client.revocations`: backends write the same keys). Failures raise
BrokerError: the same Redis, the same outage."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from archmesh_client.revocations import (
    RedisRevocations,
    cutoff_seconds,
    is_revoked,
    token_revocation_key,
    user_revocation_key,
)

from shared.broker import Liveness, backend_of
from shared.broker.reads import TurnBatch
from shared.redis_calls import as_broker_error, redis_client


class RevocationStore(Protocol):
    async def revoke_token(self, jti: str, until: float) -> None:
        """Refuse the token with this `jti` until `until` (Unix seconds)."""
        ...

    async def revoke_user(self, user_id: str, before: float, until: float) -> None:
        """Refuse `user_id`'s tokens issued before `before`, until `until`."""
        ...

    async def revoked(self, jti: str | None, user_id: str, issued_at: float | None) -> bool:
        """Whether a token (its `jti`, `sub` and `iat` claims) is revoked."""
        ...

    async def close(self) -> None: ...


class MemoryRevocations:
    """One process's revocations, with Redis' semantics (latest cut-off, latest expiry)."""

    def __init__(self) -> None:
        self._tokens: dict[str, float] = {}  # jti -> until
        self._users: dict[str, tuple[float, float]] = {}  # user -> (before, until)

    async def revoke_token(self, jti: str, until: float) -> None:
        self._prune()
        if until > time.time():
            self._tokens[jti] = max(until, self._tokens.get(jti, 0.0))

    async def revoke_user(self, user_id: str, before: float, until: float) -> None:
        self._prune()
        old_before, old_until = self._users.get(user_id, (before, until))
        until = max(until, old_until)
        if until > time.time():
            self._users[user_id] = (max(before, old_before), until)

    async def revoked(self, jti: str | None, user_id: str, issued_at: float | None) -> bool:
        now = time.time()
        if jti is not None and self._tokens.get(jti, 0.0) > now:
            return True
        before, until = self._users.get(user_id, (None, 0.0))
        return until > now and is_revoked(issued_at, before)

    def _prune(self) -> None:
        """Drop what has expired, so the maps never outgrow the live revocations."""
        now = time.time()
        for jti in [j for j, until in self._tokens.items() if until <= now]:
            del self._tokens[jti]
        for user in [u for u, (_, until) in self._users.items() if until <= now]:
            del self._users[user]

    async def close(self) -> None:
        pass


class RedisRevocationStore:
    """The shared layout over one server or a Cluster; Redis failures become BrokerError."""

    def __init__(self, url: str, liveness: Liveness, *, cluster: bool) -> None:
        self._redis = redis_client(url, liveness, cluster=cluster)
        self._revocations = RedisRevocations(self._redis)
        # On one server, the checks of one event-loop turn (a burst of connects) are one MGET.
        self._gets = None if cluster else TurnBatch[str, bytes | None](self._get, self._mget)

    async def revoke_token(self, jti: str, until: float) -> None:
        with as_broker_error("revocation"):
            await self._revocations.revoke_token(jti, until)

    async def revoke_user(self, user_id: str, before: float, until: float) -> None:
        with as_broker_error("revocation"):
            await self._revocations.revoke_user(user_id, before, until)

    async def revoked(self, jti: str | None, user_id: str, issued_at: float | None) -> bool:
        gets = self._gets
        with as_broker_error("revocation check"):
            if gets is None:
                return await self._revocations.revoked(jti, user_id, issued_at)
            cut_off = gets.read(user_revocation_key(user_id))
            if jti is None:
                return is_revoked(issued_at, cutoff_seconds(await cut_off))
            user, token = await asyncio.gather(cut_off, gets.read(token_revocation_key(jti)))
            return token is not None or is_revoked(issued_at, cutoff_seconds(user))

    async def _get(self, key: str) -> bytes | None:
        value: bytes | None = await self._redis.get(key)
        return value

    async def _mget(self, keys: list[str]) -> list[bytes | BaseException | None]:
        return list(await self._redis.mget(keys))

    async def close(self) -> None:
        if self._gets is not None:
            await self._gets.close()
        await self._redis.aclose()


def create_revocations(url: str, liveness: Liveness | None = None) -> RevocationStore:
    """An empty URL means the embedded in-memory store; an unknown scheme fails loudly."""
    backend = backend_of(url)
    if backend == "memory":
        return MemoryRevocations()
    return RedisRevocationStore(url, liveness or Liveness(), cluster=backend == "cluster")
