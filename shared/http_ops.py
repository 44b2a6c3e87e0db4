"""The routes operators and orchestrators probe on every process, written once: `/healthz`
(the process answers: `{"status": "ok", "node"}`), `/readyz` (it should get traffic now, by the
app's own check: `{"ready", ...the check's details, "node"}`, 503 when not) and `/metrics` (the
app's own Prometheus registry)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

METRICS_MEDIA_TYPE = "text/plain; version=0.0.4"


@dataclass(frozen=True)
class Readiness:
    ready: bool
    details: Mapping[str, Any] = field(default_factory=dict)


def ops_routes(
    node: str,
    readiness: Callable[[], Awaitable[Readiness]],
    registry: CollectorRegistry,
    *,
    before_scrape: Callable[[], Awaitable[None]] | None = None,
) -> list[Route]:
    """`before_scrape` refreshes gauges that are read only when scraped."""

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok", "node": node})

    async def readyz(_: Request) -> Response:
        state = await readiness()
        body = {"ready": state.ready, **state.details, "node": node}
        return JSONResponse(body, status_code=200 if state.ready else 503)

    async def metrics(_: Request) -> Response:
        if before_scrape is not None:
            await before_scrape()
        return Response(generate_latest(registry), media_type=METRICS_MEDIA_TYPE)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
