"""The routes operators and orchestrators probe on every process, written once: `/healthz`
(the process answers: `{"status": "ok", "node"}`), `/readyz` (it should get traffic now, by the
app's own check: `{"ready", ...the check's details, "node"}`, 503 when not) and `/metrics` (the
app's own Prometheus registry)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.openapi import operation

METRICS_MEDIA_TYPE = "text/plain; version=0.0.4"


class Health(BaseModel):
    status: str
    node: str


class Ready(BaseModel):
    """`ready`, the app's own check's details (the gateway's `broker`, `control`, `draining`),
    and `node`."""

    model_config = ConfigDict(extra="allow")
    ready: bool
    node: str


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

    @operation("The process answers", response=Health, auth=(), tag="operations")
    async def healthz(_: Request) -> Response:
        return JSONResponse(Health(status="ok", node=node).model_dump())

    @operation(
        "Whether the process should get traffic now (503 when not)",
        response=Ready,
        same_body=(503,),
        auth=(),
        tag="operations",
    )
    async def readyz(_: Request) -> Response:
        state = await readiness()
        body = Ready(ready=state.ready, node=node, **state.details).model_dump()
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @operation(
        "Prometheus metrics of this process",
        media_type=METRICS_MEDIA_TYPE,
        auth=(),
        tag="operations",
    )
    async def metrics(_: Request) -> Response:
        if before_scrape is not None:
            await before_scrape()
        return Response(generate_latest(registry), media_type=METRICS_MEDIA_TYPE)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
