"""The control API (API key): `POST /api/control/{disconnect,unsubscribe,subscribe,revoke}`.

Every node serves it and every node acts on it: a call stores what a revocation revokes and
publishes the command on the control stream, which all nodes follow (gateway/control.py). It
runs the client package's `ControlClient` over this node's broker and revocation store, so a
backend using that client directly on Redis gives exactly the same commands. Refusals are
`ApiError`s (shared/http_errors.py renders them)."""

from __future__ import annotations

import time
from typing import Any, TypeVar

from archmesh_client.control import ControlClient
from archmesh_client.control_commands import (
    ControlCommand,
    Disconnect,
    RevokeToken,
    RevokeUser,
    Subscribe,
    Unsubscribe,
)
from archmesh_client.stream import StreamPosition
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api_models import ControlSent, Revoke
from shared.broker import Broker
from shared.http_api import json_body, require_api_key
from shared.http_errors import ApiError
from shared.openapi import operation
from shared.revocations import RevocationStore
from shared.settings import Settings

BODY_LIMIT = 4096
# The body's `type` is the path's: the control models document it, the API refuses it.
_CONTROL: dict[str, Any] = {
    "response": ControlSent,
    "tag": "control",
    "description": "The body is the command without `type`: the path gives it (422 if sent).",
}
M = TypeVar("M", bound=BaseModel)


class NodeControlTransport:
    """The control client's way out on a node: its broker and its revocation store."""

    def __init__(self, broker: Broker, store: RevocationStore) -> None:
        self._broker = broker
        self._store = store

    async def publish(self, channel: str, data: str) -> StreamPosition:
        return await self._broker.publish(channel, data)

    async def revoke_token(self, jti: str, until: float) -> None:
        await self._store.revoke_token(jti, until)

    async def revoke_user(self, user_id: str, before: float, until: float) -> None:
        await self._store.revoke_user(user_id, before, until)


class ControlApi:
    def __init__(self, client: ControlClient, settings: Settings) -> None:
        self._client = client
        self._settings = settings

    @property
    def routes(self) -> list[Route]:
        return [
            Route("/api/control/disconnect", self.disconnect, methods=["POST"]),
            Route("/api/control/unsubscribe", self.unsubscribe, methods=["POST"]),
            Route("/api/control/subscribe", self.subscribe, methods=["POST"]),
            Route("/api/control/revoke", self.revoke, methods=["POST"]),
        ]

    @operation("Close a user's connections on every node", body=Disconnect, **_CONTROL)
    async def disconnect(self, request: Request) -> Response:
        """`{"user", "reconnect"?: true}`"""
        body = await self._body(request)
        return await self._send(_command(Disconnect, body))

    @operation("Take a channel from a user's connections", body=Unsubscribe, **_CONTROL)
    async def unsubscribe(self, request: Request) -> Response:
        """`{"user", "channel", "reason"?: "server"}`"""
        body = await self._body(request)
        return await self._send(_command(Unsubscribe, body))

    @operation("Subscribe a user's connections to a channel", body=Subscribe, **_CONTROL)
    async def subscribe(self, request: Request) -> Response:
        """`{"user", "channel"}`"""
        body = await self._body(request)
        return await self._send(_command(Subscribe, body))

    @operation("Revoke a token or a user's tokens", body=Revoke, **_CONTROL)
    async def revoke(self, request: Request) -> Response:
        """`{"jti", "exp"?}` (one token) or `{"user", "before"?}` (a user's tokens issued
        before `before`, default now)."""
        body = await self._body(request)
        if "jti" in body:
            command: ControlCommand = _command(RevokeToken, body, exp=self._client.default_exp())
        elif "user" in body:
            command = _command(RevokeUser, body, before=time.time())
        else:
            raise ApiError(422, "bad_request", 'expected {"jti": ...} or {"user": ...}')
        return await self._send(command)

    async def _body(self, request: Request) -> dict[str, Any]:
        require_api_key(request, self._settings.api_key)
        body = await json_body(request, BODY_LIMIT)
        if not isinstance(body, dict):
            raise ApiError(422, "bad_request", "expected a JSON object")
        if "type" in body:
            raise ApiError(422, "bad_request", "type: the path says what the command is")
        return body

    async def _send(self, command: ControlCommand) -> Response:
        position = await self._client.send(command)  # BrokerError: 503 unavailable
        reply = ControlSent(type=command.type, offset=position.offset, epoch=position.epoch)
        return JSONResponse(reply.model_dump())


def _command(model: type[M], body: dict[str, Any], **defaults: Any) -> M:
    try:
        return model.model_validate({**defaults, **body})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ApiError(422, "bad_request", f"{where}: {first['msg']}") from None
