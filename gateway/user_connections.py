"""A node's connected clients by user: what control commands act on (a user's connections on
this node), and where the per-user connection limit (ARCHMESH_USER_CONNECTION_LIMIT) is kept."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from gateway.protocol import CloseCode
from shared.tokens import Claims


class Controlled(Protocol):
    """What control needs of a client connection (gateway.connection.Connection), so that the
    index and the control follower never import it."""

    user_id: str | None
    claims: Claims | None

    def close(self, code: CloseCode) -> None: ...

    async def subscribe_by_server(self, channel: str) -> None: ...

    async def unsubscribe_by_server(self, channel: str, reason: str) -> None: ...


class UserConnections:
    def __init__(self, limit: int = 0) -> None:
        """`limit`: connections per user on this node; 0 for none."""
        self._limit = limit
        self._by_user: dict[str, set[Controlled]] = {}

    def add(self, conn: Controlled, user_id: str) -> bool:
        """Register `conn` as one of `user_id`'s; False (and not registered) over the limit."""
        conns = self._by_user.setdefault(user_id, set())
        if self._limit and len(conns) >= self._limit:
            if not conns:
                del self._by_user[user_id]
            return False
        conns.add(conn)
        return True

    def discard(self, conn: Controlled) -> None:
        conns = self._by_user.get(conn.user_id or "")
        if conns is not None and conn in conns:
            conns.discard(conn)
            if not conns:
                del self._by_user[conn.user_id or ""]

    def of(self, user_id: str) -> list[Controlled]:
        """A copy: closing or awaiting one of them may change the index meanwhile."""
        return list(self._by_user.get(user_id, ()))

    def __iter__(self) -> Iterator[Controlled]:
        """Every registered connection, over a copy."""
        return iter([conn for conns in self._by_user.values() for conn in conns])

    def __contains__(self, conn: object) -> bool:
        user_id = getattr(conn, "user_id", None)
        return user_id is not None and conn in self._by_user.get(user_id, ())
