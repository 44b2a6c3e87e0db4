"""Who may hold a connection on this node, beyond a token that verifies: the token is not
revoked (checked at connect, at refresh, and for a subscription token at subscribe), and its
user is within the per-user connection limit.

When Redis cannot answer a revocation check, the node admits the client rather than refusing
everyone during an outage, and checks that connection again as soon as Redis answers: a revoked
token then loses its connection within moments of the outage's end."""

from __future__ import annotations

import asyncio
import contextlib

from archmesh_client.backoff import Backoff

from gateway.protocol import CloseCode
from gateway.user_connections import Controlled, UserConnections
from shared.broker import BrokerError
from shared.logging import get_logger
from shared.revocations import RevocationStore
from shared.tokens import Claims, InvalidToken, TokenVerifier

log = get_logger(__name__)


class Admission:
    def __init__(
        self, store: RevocationStore, users: UserConnections, verifier: TokenVerifier
    ) -> None:
        self._store = store
        self._users = users
        self._verifier = verifier
        self._unchecked: set[Controlled] = set()  # admitted while Redis did not answer
        self._rechecking: asyncio.Task[None] | None = None

    async def revoked(self, claims: Claims) -> bool:
        """Raises BrokerError when the store cannot tell."""
        return await self._store.revoked(claims.token_id, claims.user_id, claims.issued_at)

    async def admit(self, conn: Controlled, claims: Claims) -> CloseCode | None:
        """At connect: None to admit `conn` (then registered as one of its user's
        connections), else the code to close it with."""
        if await self._refused(conn, claims):
            return CloseCode.TOKEN_REVOKED
        if not self._users.add(conn, claims.user_id):
            return CloseCode.CONNECTION_LIMIT
        return None

    async def renewal_allowed(self, conn: Controlled, claims: Claims) -> bool:
        """At refresh: whether the new token may replace the connection's."""
        return not await self._refused(conn, claims)

    async def grant_allowed(self, token: str) -> bool:
        """At subscribe: whether a subscription token is not revoked. One that does not verify
        played no part in the decision (authorization checked it): nothing to refuse."""
        try:
            grant = self._verifier.verify(token)
        except InvalidToken:
            return True
        try:
            return not await self.revoked(grant)
        except BrokerError as exc:
            log.warning("revocation_check_failed", stage="subscribe", error=str(exc))
            return True

    def admitted(self, conn: Controlled) -> bool:
        """Whether `conn` was admitted and has not left."""
        return conn in self._users

    def left(self, conn: Controlled) -> None:
        self._users.discard(conn)
        self._unchecked.discard(conn)

    async def _refused(self, conn: Controlled, claims: Claims) -> bool:
        try:
            return await self.revoked(claims)
        except BrokerError as exc:
            log.warning("revocation_check_failed", user_id=claims.user_id, error=str(exc))
            self._unchecked.add(conn)
            if self._rechecking is None or self._rechecking.done():
                self._rechecking = asyncio.create_task(self._recheck(), name="revocation recheck")
            return False

    async def _recheck(self) -> None:
        """Check the connections admitted unchecked, as soon as the store answers again."""
        backoff = Backoff(base=0.2, cap=5.0)
        while self._unchecked:
            await asyncio.sleep(backoff.next_delay())
            for conn in list(self._unchecked):
                claims = conn.claims
                if conn not in self._unchecked or claims is None:
                    continue
                try:
                    revoked = await self.revoked(claims)
                except BrokerError:
                    break  # still out: wait and try again
                self._unchecked.discard(conn)
                if revoked:
                    log.info("revoked_connection_closed", user_id=claims.user_id, late=True)
                    conn.close(CloseCode.TOKEN_REVOKED)

    async def stop(self) -> None:
        if self._rechecking is not None:
            self._rechecking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rechecking
