"""Control for backends: disconnect a user, take a channel away from them or give them one,
revoke tokens, on every gateway node at once.

    async with connect_control("redis://localhost:6379/0") as control:
        await control.disconnect("alice", reconnect=False)
        await control.subscribe("alice", "session:abc")
        await control.revoke_user("alice")  # every token issued before now

`connect_control` talks to Redis (or a Redis Cluster) directly: a revocation is stored first
(`archmesh_client.revocations`), then the command is published on the control stream
(`archmesh_client.control_commands`) that every node follows. Each call answers the command's
position on that stream. The gateways' control API (`POST /api/control/...`) runs the same
`ControlClient` over the node's own broker and revocation store.

Invalid arguments raise pydantic's ValidationError; Redis failures raise `ControlError` (the
command may or may not have been given: every command is safe to give again).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from archmesh_client.control_commands import (
    CONTROL_CHANNEL,
    CONTROL_RETENTION,
    DEFAULT_MAX_TOKEN_LIFETIME,
    REVOCATION_MARGIN,
    ControlCommand,
    Disconnect,
    RevokeToken,
    RevokeUser,
    Subscribe,
    Unsubscribe,
)
from archmesh_client.redis_transport import (
    NETWORK_ERRORS,
    PublishError,
    RedisTransport,
    redis_client,
)
from archmesh_client.retention import HistoryPolicy
from archmesh_client.revocations import RedisRevocations
from archmesh_client.stream import StreamPosition


class ControlError(RuntimeError):
    """Redis could not be reached, or refused the command. It may or may not have happened."""


class ControlTransport(Protocol):
    """Where commands go: Redis for a backend, the node's broker and stores for a gateway."""

    async def publish(self, channel: str, data: str) -> StreamPosition: ...

    async def revoke_token(self, jti: str, until: float) -> None: ...

    async def revoke_user(self, user_id: str, before: float, until: float) -> None: ...


class ControlClient:
    """`max_token_lifetime`: the longest lifetime (exp - iat, seconds) of the tokens the backend
    issues, as the gateways' ARCHMESH_MAX_TOKEN_LIFETIME: how long a user revocation is kept."""

    def __init__(
        self, transport: ControlTransport, max_token_lifetime: float = DEFAULT_MAX_TOKEN_LIFETIME
    ) -> None:
        self._transport = transport
        self.max_token_lifetime = max_token_lifetime

    async def disconnect(self, user_id: str, *, reconnect: bool = True) -> StreamPosition:
        return await self.send(Disconnect(user=user_id, reconnect=reconnect))

    async def unsubscribe(
        self, user_id: str, channel: str, *, reason: str = "server"
    ) -> StreamPosition:
        return await self.send(Unsubscribe(user=user_id, channel=channel, reason=reason))

    async def subscribe(self, user_id: str, channel: str) -> StreamPosition:
        return await self.send(Subscribe(user=user_id, channel=channel))

    async def revoke_token(self, jti: str, *, exp: float | None = None) -> StreamPosition:
        """Revoke one token by its `jti` claim until its `exp` (default: the longest lifetime
        from now)."""
        return await self.send(RevokeToken(jti=jti, exp=self.default_exp() if exp is None else exp))

    async def revoke_user(self, user_id: str, *, before: float | None = None) -> StreamPosition:
        """Revoke every token of `user_id` issued before `before` (default: now)."""
        when = time.time() if before is None else before
        return await self.send(RevokeUser(user=user_id, before=when))

    def default_exp(self) -> float:
        """The latest `exp` a token issued now may have."""
        return time.time() + self.max_token_lifetime

    async def send(self, command: ControlCommand) -> StreamPosition:
        """Store what a revocation revokes, then publish the command on the control stream."""
        if isinstance(command, RevokeToken):
            await self._transport.revoke_token(command.jti, command.exp + REVOCATION_MARGIN)
        elif isinstance(command, RevokeUser):
            until = command.before + self.max_token_lifetime + REVOCATION_MARGIN
            await self._transport.revoke_user(command.user, command.before, until)
        return await self._transport.publish(CONTROL_CHANNEL, command.model_dump_json())


class RedisControlTransport:
    """A backend's way to the control stream and the revocations: its own Redis connection."""

    def __init__(self, url: str) -> None:
        self._stream = RedisTransport(url, HistoryPolicy(default=CONTROL_RETENTION))
        self._redis = redis_client(url)
        self._revocations = RedisRevocations(self._redis)

    async def publish(self, channel: str, data: str) -> StreamPosition:
        try:
            return await self._stream.publish(channel, data)
        except PublishError as exc:
            raise ControlError(str(exc)) from exc

    async def revoke_token(self, jti: str, until: float) -> None:
        try:
            await self._revocations.revoke_token(jti, until)
        except NETWORK_ERRORS as exc:
            raise ControlError(f"revocation failed: {exc}") from exc

    async def revoke_user(self, user_id: str, before: float, until: float) -> None:
        try:
            await self._revocations.revoke_user(user_id, before, until)
        except NETWORK_ERRORS as exc:
            raise ControlError(f"revocation failed: {exc}") from exc

    async def close(self) -> None:
        await self._stream.close()
        await self._redis.aclose()


@asynccontextmanager
async def connect_control(
    redis_url: str, max_token_lifetime: float = DEFAULT_MAX_TOKEN_LIFETIME
) -> AsyncIterator[ControlClient]:
    """A control client with its own Redis connection, for a backend process."""
    transport = RedisControlTransport(redis_url)
    try:
        yield ControlClient(transport, max_token_lifetime)
    finally:
        await transport.close()
