"""The product's web page at `/`, and the endpoints only `archmesh-rt dev` answers.

The page is static (gateway/static/index.html, app.js, app.css) apart from one JSON island
that tells it whether this node runs in development mode. Development mode mints tokens for
any user and simulates workflows; every other node answers those paths with 404.
"""

from __future__ import annotations

import asyncio
import time
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from archmesh_client.channels import InvalidChannel, session_channel, user_channel, validate_channel
from archmesh_client.events import WorkflowStatus, WorkflowUpdate
from archmesh_client.publisher import InvalidPublication
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message

from shared.broker import BrokerError
from shared.http_api import ApiError, error_response, json_body
from shared.logging import get_logger
from shared.tokens import issue_token

if TYPE_CHECKING:
    from gateway.app import Gateway

log = get_logger(__name__)

STATIC = Path(__file__).parent / "static"
_CONFIG_SLOT = "<!--archmesh-config-->"
# The page loads only its own files and talks only to its own origin (its WebSocket too).
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    # A token given in the URL fragment never leaves the browser; keep the rest private too.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_MAX_DEV_BODY = 8192
_MAX_SESSIONS = 50
_TOKEN_TTL = 3600
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
_MAX_SIMULATIONS = 20


@cache
def _template() -> str:
    return (STATIC / "index.html").read_text(encoding="utf-8")


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def index(request: Request) -> Response:
    gateway = _gateway(request)
    config = {"dev": gateway.dev, "node": gateway.node}
    # `</` cannot occur in orjson output of these values, but escape as if it could.
    island = orjson.dumps(config).decode().replace("</", "<\\/")
    body = _template().replace(
        _CONFIG_SLOT,
        f'<script type="application/json" id="archmesh-config">{island}</script>',
    )
    return Response(body, media_type="text/html; charset=utf-8", headers=_SECURITY_HEADERS)


def _require_dev(request: Request) -> Gateway:
    gateway = _gateway(request)
    if not gateway.dev:
        raise ApiError(404, "not_found", "development endpoints exist only in `archmesh-rt dev`")
    # JSON only: a cross-site form or "simple" fetch cannot send it without a CORS preflight,
    # which this node never grants for these paths.
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
    return gateway


async def _dev_body(request: Request) -> tuple[Gateway, dict[str, Any]]:
    gateway = _require_dev(request)
    body = await json_body(request, _MAX_DEV_BODY)
    if not isinstance(body, dict):
        raise ApiError(422, "bad_request", "expected a JSON object")
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
    if not isinstance(value, list) or len(value) > _MAX_SESSIONS:
        raise _invalid("sessions", f"a list of at most {_MAX_SESSIONS} session ids")
    for item in value:
        try:
            session_channel(item if isinstance(item, str) else "")
        except InvalidChannel:
            raise _invalid("sessions", f"{item!r} is not a valid session id") from None
    return list(dict.fromkeys(value))


async def dev_token(request: Request) -> Response:
    """{user_id, sessions?, channel?} -> {token, user_id, expires_at}. With `channel` the token
    is a subscription token for that one channel (how the page joins a session it creates)."""
    try:
        gateway, body = await _dev_body(request)
        user_id, sessions = _user_id(body), _sessions(body)
        channel = body.get("channel")
        if channel is not None:
            try:
                validate_channel(channel)
            except InvalidChannel as exc:
                raise _invalid("channel", str(exc)) from None
    except ApiError as exc:
        return exc.response
    settings = gateway.settings
    if settings.jwt_secret is None:
        return error_response(
            503, "unavailable", "no ARCHMESH_JWT_SECRET to sign development tokens"
        )
    token = issue_token(
        settings.jwt_secret.get_secret_value(),
        user_id,
        sessions=sessions,
        channel=channel,
        ttl=_TOKEN_TTL,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
    log.info("dev_token_issued", user_id=user_id, sessions=len(sessions), channel=channel)
    expires_at = int(time.time()) + _TOKEN_TTL
    return JSONResponse({"token": token, "user_id": user_id, "expires_at": expires_at})


class Simulations:
    """Running simulated workflows of one node; bounded so a loop of clicks cannot pile up."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, gateway: Gateway, session_id: str, interval: float) -> None:
        task = asyncio.create_task(_simulate(gateway, session_id, interval))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def _simulations(request: Request) -> Simulations:
    state = request.app.state
    if not hasattr(state, "simulations"):
        state.simulations = Simulations()
    simulations: Simulations = state.simulations
    return simulations


async def _register_owner(request: Request, gateway: Gateway, session_id: str, owner: str) -> int:
    """In dev the notifier's API is mounted on this app: register the session's owner through
    it, in process and with the API key, as a backend would over HTTP, so that the review stage
    notifies the user. Returns the HTTP status (404: no notifier here)."""
    key = gateway.settings.api_key
    if key is None:
        return 503
    body = orjson.dumps({"owner_id": owner})
    path = f"/api/sessions/{session_id}"
    scope = {
        **{k: v for k, v in request.scope.items() if k in ("app", "state", "server", "client")},
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"authorization", b"Bearer " + key.get_secret_value().encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    status = 500

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await request.app(scope, receive, send)
    return status


async def _simulate(gateway: Gateway, session_id: str, interval: float) -> None:
    channel = session_channel(session_id)
    for index, (stage, progress, status, message) in enumerate(SIMULATED_STAGES):
        if index:
            await asyncio.sleep(interval)
        update = WorkflowUpdate(
            session_id=session_id,
            stage=stage,
            progress=progress,
            status=status,
            message=message,
        )
        try:
            await gateway.publisher.publish(channel, update)
        except (BrokerError, InvalidPublication) as exc:
            log.warning("simulation_stopped", channel=channel, stage=stage, error=str(exc))
            return
        gateway.metrics.published.inc()
    log.info("simulation_finished", channel=channel)


async def dev_simulate(request: Request) -> Response:
    """{session_id, user_id?, interval?} -> 202: publishes SIMULATED_STAGES on the session,
    `interval` seconds apart (default 0.6). With `user_id` the notifier (when this process hosts
    one) is told that user owns the session, so the review and the end notify them."""
    try:
        gateway, body = await _dev_body(request)
        session_id = body.get("session_id")
        try:
            session_channel(session_id if isinstance(session_id, str) else "")
        except InvalidChannel:
            raise _invalid("session_id", "1-128 of A-Z a-z 0-9 . _ @ | + = -") from None
        user_id = _user_id(body) if body.get("user_id") is not None else None
        interval = body.get("interval", 0.6)
        if not isinstance(interval, int | float) or not 0.01 <= interval <= 10:
            raise _invalid("interval", "seconds between stages, 0.01 to 10")
    except ApiError as exc:
        return exc.response
    assert isinstance(session_id, str)
    simulations = _simulations(request)
    if len(simulations.tasks) >= _MAX_SIMULATIONS:
        return error_response(429, "too_many_simulations", f"at most {_MAX_SIMULATIONS} at a time")
    notified = user_id is not None and (
        await _register_owner(request, gateway, session_id, user_id) == 200
    )
    simulations.start(gateway, session_id, float(interval))
    stages = [stage for stage, *_ in SIMULATED_STAGES]
    payload = {
        "channel": f"session:{session_id}",
        "stages": stages,
        "interval": interval,
        "owner_notified": notified,
    }
    return JSONResponse(payload, status_code=202)


routes = [
    Route("/", index, methods=["GET"]),
    Route("/api/dev/token", dev_token, methods=["POST"]),
    Route("/api/dev/simulate", dev_simulate, methods=["POST"]),
]
