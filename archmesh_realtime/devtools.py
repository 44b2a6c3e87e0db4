"""The page's development features, mounted only by `archmesh-rt dev`: tokens for any user and
simulated workflows. A production node has no such routes at all (its 404 is the generic one).

The simulation tells the notifier who owns a simulated session through `OwnerRegistry` (the
notifier's workflow watcher, injected by the composition), so the review stage notifies them."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Protocol

from archmesh_client.channels import InvalidChannel, session_channel, user_channel, validate_channel
from archmesh_client.events import WorkflowStatus, WorkflowUpdate
from archmesh_client.publisher import InvalidPublication
from pydantic import BaseModel
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.broker import BrokerError
from shared.http_api import json_body
from shared.http_errors import ApiError
from shared.logging import get_logger
from shared.openapi import operation
from shared.tokens import issue_token

if TYPE_CHECKING:
    from gateway.app import Gateway

log = get_logger(__name__)

MAX_BODY = 8192
MAX_SESSIONS = 50
MAX_SIMULATIONS = 20
TOKEN_TTL = 3600
# A realistic ArchMesh run: requirements, design, a human review, then the documents.
SIMULATED_STAGES: tuple[tuple[str, float, WorkflowStatus, str], ...] = (
    ("requirements_intake", 0.05, WorkflowStatus.RUNNING, "Reading the requirements document"),
    ("requirements_analysis", 0.2, WorkflowStatus.RUNNING, "Extracted 14 functional requirements"),
    ("architecture_design", 0.4, WorkflowStatus.RUNNING, "Drafting components and interfaces"),
    ("design_generation", 0.6, WorkflowStatus.RUNNING, "Generating C4 diagrams"),
    (
        "architecture_review",
        0.7,
        WorkflowStatus.REVIEW_REQUIRED,
        "The proposed architecture needs your review",
    ),
    ("validation", 0.85, WorkflowStatus.RUNNING, "Review approved; checking the design"),
    ("documentation", 0.95, WorkflowStatus.RUNNING, "Writing architecture decision records"),
    ("done", 1.0, WorkflowStatus.COMPLETED, "Design package ready"),
)


class DevToken(BaseModel):
    token: str
    user_id: str
    expires_at: int


class Simulation(BaseModel):
    channel: str
    stages: list[str]
    interval: int | float
    owner_notified: bool


class OwnerRegistry(Protocol):
    """Who owns a workflow session, for the notifier's workflow rules."""

    async def watch(self, session_id: str, owner_id: str) -> None: ...


class DevTools:
    """`POST /api/dev/token` and `POST /api/dev/simulate`; simulations bounded in number so a
    loop of clicks cannot pile them up."""

    def __init__(self, owners: OwnerRegistry | None) -> None:
        self._owners = owners
        self._simulations: set[asyncio.Task[None]] = set()

    @property
    def routes(self) -> list[Route]:
        return [
            Route("/api/dev/token", self.token, methods=["POST"]),
            Route("/api/dev/simulate", self.simulate, methods=["POST"]),
        ]

    @operation(
        "Development only: a token for any user",
        description='{"user_id", "sessions"?: [...], "channel"?} (Content-Type: application/json)',
        response=DevToken,
        errors=(400, 413, 415, 422, 503),
        auth=(),
        tag="development",
    )
    async def token(self, request: Request) -> Response:
        """{user_id, sessions?, channel?} -> {token, user_id, expires_at}. With `channel` the
        token is a subscription token for that one channel (how the page joins a session it
        creates)."""
        gateway, body = await _request(request)
        user_id, sessions = _user_id(body), _sessions(body)
        channel = body.get("channel")
        if channel is not None:
            try:
                validate_channel(channel)
            except InvalidChannel as exc:
                raise _invalid("channel", str(exc)) from None
        settings = gateway.settings
        if settings.jwt_secret is None:
            raise ApiError(503, "unavailable", "no ARCHMESH_JWT_SECRET to sign development tokens")
        token = issue_token(
            settings.jwt_secret.get_secret_value(),
            user_id,
            sessions=sessions,
            channel=channel,
            ttl=TOKEN_TTL,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )
        log.info("dev_token_issued", user_id=user_id, sessions=len(sessions), channel=channel)
        expires_at = int(time.time()) + TOKEN_TTL
        reply = DevToken(token=token, user_id=user_id, expires_at=expires_at)
        return JSONResponse(reply.model_dump())

    @operation(
        "Development only: publish a simulated workflow on a session",
        description='{"session_id", "user_id"?, "interval"?} (Content-Type: application/json)',
        response=Simulation,
        status=202,
        errors=(400, 413, 415, 422, 429),
        auth=(),
        tag="development",
    )
    async def simulate(self, request: Request) -> Response:
        """{session_id, user_id?, interval?} -> 202: publishes SIMULATED_STAGES on the session,
        `interval` seconds apart (default 0.6). With `user_id` the notifier (when this process
        hosts one) is told that user owns the session, so the review and the end notify them."""
        gateway, body = await _request(request)
        session_id = body.get("session_id")
        try:
            channel = session_channel(session_id if isinstance(session_id, str) else "")
        except InvalidChannel:
            raise _invalid("session_id", "1-128 of A-Z a-z 0-9 . _ @ | + = -") from None
        assert isinstance(session_id, str)
        user_id = _user_id(body) if body.get("user_id") is not None else None
        interval = body.get("interval", 0.6)
        if not isinstance(interval, int | float) or not 0.01 <= interval <= 10:
            raise _invalid("interval", "seconds between stages, 0.01 to 10")
        if len(self._simulations) >= MAX_SIMULATIONS:
            raise ApiError(429, "too_many_simulations", f"at most {MAX_SIMULATIONS} at a time")
        notified = False
        if user_id is not None and self._owners is not None:
            try:
                await self._owners.watch(session_id, user_id)
                notified = True
            except (BrokerError, RedisError, OSError) as exc:  # the simulation runs regardless
                log.warning("simulation_owner_not_registered", session=session_id, error=str(exc))
        task = asyncio.create_task(_simulate(gateway, session_id, float(interval)))
        self._simulations.add(task)
        task.add_done_callback(self._simulations.discard)
        reply = Simulation(
            channel=channel,
            stages=[stage for stage, *_ in SIMULATED_STAGES],
            interval=interval,
            owner_notified=notified,
        )
        return JSONResponse(reply.model_dump(), status_code=202)


async def _request(request: Request) -> tuple[Gateway, dict[str, Any]]:
    # JSON only: a cross-site form or "simple" fetch cannot send it without a CORS preflight,
    # which this node never grants for these paths.
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
    body = await json_body(request, MAX_BODY)
    if not isinstance(body, dict):
        raise ApiError(422, "bad_request", "expected a JSON object")
    gateway: Gateway = request.app.state.gateway
    return gateway, body


def _invalid(field: str, message: str) -> ApiError:
    fields = [{"loc": [field], "msg": message, "type": "value_error"}]
    return ApiError(422, "validation_error", f"{field}: {message}", fields=fields)


def _user_id(body: dict[str, Any]) -> str:
    value = body.get("user_id")
    try:
        user_channel(value if isinstance(value, str) else "")
    except InvalidChannel:
        raise _invalid("user_id", "1-128 of A-Z a-z 0-9 . _ @ | + = -") from None
    assert isinstance(value, str)
    return value


def _sessions(body: dict[str, Any]) -> list[str]:
    value = body.get("sessions", [])
    if not isinstance(value, list) or len(value) > MAX_SESSIONS:
        raise _invalid("sessions", f"a list of at most {MAX_SESSIONS} session ids")
    for item in value:
        try:
            session_channel(item if isinstance(item, str) else "")
        except InvalidChannel:
            raise _invalid("sessions", f"{item!r} is not a valid session id") from None
    return list(dict.fromkeys(value))


async def _simulate(gateway: Gateway, session_id: str, interval: float) -> None:
    channel = session_channel(session_id)
    for index, (stage, progress, status, message) in enumerate(SIMULATED_STAGES):
        if index:
            await asyncio.sleep(interval)
        update = WorkflowUpdate(
            session_id=session_id, stage=stage, progress=progress, status=status, message=message
        )
        try:
            await gateway.publisher.publish(channel, update)
        except (BrokerError, InvalidPublication) as exc:
            log.warning("simulation_stopped", channel=channel, stage=stage, error=str(exc))
            return
        gateway.metrics.published.inc()
    log.info("simulation_finished", channel=channel)
