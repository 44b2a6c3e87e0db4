"""The operator console at `/admin` and the read endpoints it needs that no other API gives
(`/api/admin/*`): the live nodes, the busiest channels across them, a channel's presence and a
user's connections. Every action the console takes (publish, disconnect, unsubscribe, revoke,
history, the notifier's queues) goes through the documented APIs instead.

All of it asks for the operator's credential (shared/admin_auth.py): the API key or an admin
token; a user token gets 403. The page has the same CSP and headers as the product's page."""

from __future__ import annotations

import time
from typing import Any

from archmesh_client.channels import InvalidChannel, user_channel, validate_channel
from pydantic import BaseModel, SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.admin_models import (
    BusiestChannels,
    ChannelPresence,
    Nodes,
    UserConnections,
    WhoAmI,
)
from gateway.page import SECURITY_HEADERS, STATIC
from gateway.presence import PresenceTracker
from shared.admin_auth import AdminTokens, require_admin
from shared.announcements import NodeBoard
from shared.broker import BrokerError
from shared.http_errors import ApiError, unavailable
from shared.openapi import operation, page

BUSIEST = 20  # channels listed by /api/admin/channels
# The operator's credential: the API key, or an admin token (the same bearer scheme).
_ADMIN: dict[str, Any] = {"errors": (403, 503), "tag": "admin"}


def _model(answer: BaseModel) -> Response:
    return Response(answer.model_dump_json(), media_type="application/json")


class AdminApi:
    def __init__(
        self,
        node: str,
        board: NodeBoard,
        presence: PresenceTracker,
        key: SecretStr | None,
        tokens: AdminTokens,
    ) -> None:
        self._node = node
        self._board = board
        self._presence = presence
        self._key = key
        self._tokens = tokens
        self._page = (STATIC / "admin.html").read_text(encoding="utf-8")

    @property
    def routes(self) -> list[Route]:
        return [
            Route("/admin", self.page, methods=["GET"]),
            Route("/api/admin/whoami", self.whoami, methods=["GET"]),
            Route("/api/admin/nodes", self.nodes, methods=["GET"]),
            Route("/api/admin/channels", self.channels, methods=["GET"]),
            Route("/api/admin/channels/{channel}/presence", self.presence, methods=["GET"]),
            Route("/api/admin/users/{user}", self.user, methods=["GET"]),
        ]

    @page
    async def page(self, _: Request) -> Response:
        """The console itself: static, signed in by its own script (nothing secret in it)."""
        return Response(self._page, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    def _auth(self, request: Request) -> str:
        return require_admin(request, self._key, self._tokens)

    @operation(
        "Which operator credential was given, and which node answered",
        response=WhoAmI,
        **_ADMIN,
    )
    async def whoami(self, request: Request) -> Response:
        """What sign-in checks."""
        credential = self._auth(request)
        return _model(WhoAmI.model_validate({"credential": credential, "node": self._node}))

    async def _nodes(self) -> list[dict[str, Any]]:
        try:
            return await self._board.nodes()
        except BrokerError as exc:
            raise unavailable(exc) from exc

    @operation(
        "The live nodes' announcements: gateways first, then notifiers, by node id",
        response=Nodes,
        **_ADMIN,
    )
    async def nodes(self, request: Request) -> Response:
        self._auth(request)
        nodes = sorted(await self._nodes(), key=lambda n: (n.get("role") != "gateway", n["node"]))
        return _model(Nodes.model_validate({"nodes": nodes, "at": time.time()}))

    @operation(
        "The busiest channels across the live gateways, by subscribers",
        response=BusiestChannels,
        **_ADMIN,
    )
    async def channels(self, request: Request) -> Response:
        """The busiest channels across the live gateways: each gateway announces its own top
        channels by local subscribers; a channel's figure here is their sum."""
        self._auth(request)
        totals: dict[str, dict[str, Any]] = {}
        for node in await self._nodes():
            for item in node.get("busiest", ()):
                entry = totals.setdefault(item["channel"], {"subscribers": 0, "nodes": []})
                entry["subscribers"] += int(item["subscribers"])
                entry["nodes"].append(node["node"])
        ranked = sorted(totals.items(), key=lambda kv: (-kv[1]["subscribers"], kv[0]))[:BUSIEST]
        busiest = [{"channel": c, **v} for c, v in ranked]
        return _model(BusiestChannels.model_validate({"channels": busiest}))

    @operation(
        "A channel's presence (who, on which node) and its counts, where it is tracked",
        response=ChannelPresence,
        errors=(403, 422, 503),
        path={"channel": "a channel name, e.g. session:abc"},
        tag="admin",
    )
    async def presence(self, request: Request) -> Response:
        self._auth(request)
        channel = _channel(request.path_params["channel"])
        found = {"channel": channel, **await self._present(channel)}
        return _model(ChannelPresence.model_validate(found))

    @operation(
        "A user's connections across every node (the presence of their `user:` channel)",
        response=UserConnections,
        errors=(403, 422, 503),
        path={"user": "the user id"},
        tag="admin",
    )
    async def user(self, request: Request) -> Response:
        """A user's connections across every node: the presence of their own channel
        (`user:<id>`, which every connection of theirs is subscribed to), where tracked."""
        self._auth(request)
        user = request.path_params["user"]
        channel = _channel(user_channel(user) if len(user) <= 128 else "user:")
        found = {"user": user, "channel": channel, **await self._present(channel)}
        return _model(UserConnections.model_validate(found))

    async def _present(self, channel: str) -> dict[str, Any]:
        if not self._presence.tracks(channel):
            return {"tracked": False, "members": [], "stats": None}
        try:
            members = await self._presence.members(channel)
            stats = await self._presence.stats(channel)
        except BrokerError as exc:
            raise unavailable(exc) from exc
        return {
            "tracked": True,
            "members": [
                {"client_id": m.client_id, "user_id": m.user_id, "node": m.node}
                for m in sorted(members, key=lambda m: (m.node, m.client_id))
            ],
            "stats": {"connections": stats.connections, "users": stats.users},
        }


def _channel(name: str) -> str:
    try:
        return validate_channel(name)
    except InvalidChannel as exc:
        raise ApiError(422, "invalid_channel", str(exc)) from None
