"""The gateway's publish API (API key). Refusals are `ApiError`s, rendered by
shared/http_errors.py; health, readiness and metrics are shared/http_ops.py's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.broker import BrokerError
from shared.http_api import json_body, require_api_key
from shared.http_errors import ApiError, unavailable
from shared.publisher import InvalidPublication

if TYPE_CHECKING:
    from gateway.app import Gateway


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def _publish_one(gateway: Gateway, item: Any) -> dict[str, Any]:
    if not isinstance(item, dict) or set(item) - {"channel", "data"} or "channel" not in item:
        raise ApiError(422, "bad_request", 'expected an object {"channel": ..., "data": {...}}')
    try:
        position = await gateway.publisher.publish(item["channel"], item.get("data"))  # type: ignore[arg-type]
    except InvalidPublication as exc:
        raise ApiError(422, exc.code, str(exc)) from None
    except BrokerError as exc:
        raise unavailable(exc) from exc
    gateway.metrics.published.inc()
    return {"channel": item["channel"], "offset": position.offset, "epoch": position.epoch}


async def publish(request: Request) -> Response:
    gateway = _gateway(request)
    require_api_key(request, gateway.settings.api_key)
    body = await json_body(request, gateway.settings.max_publish_bytes + 1024)
    return JSONResponse(await _publish_one(gateway, body))


async def publish_batch(request: Request) -> Response:
    gateway = _gateway(request)
    settings = gateway.settings
    require_api_key(request, settings.api_key)
    limit = settings.max_batch_items
    body = await json_body(request, (settings.max_publish_bytes + 1024) * min(limit, 64))
    items = body.get("items") if isinstance(body, dict) else body
    if not isinstance(items, list) or not items:
        raise ApiError(422, "bad_request", 'expected a non-empty list (or {"items": [...]})')
    if len(items) > limit:
        raise ApiError(413, "too_many_items", f"at most {limit} items per batch")
    results = []
    for index, item in enumerate(items):
        try:
            results.append({"index": index, "ok": True, **await _publish_one(gateway, item)})
        except ApiError as exc:
            results.append({"index": index, "ok": False, "error": exc.body()})
    successful = sum(1 for r in results if r["ok"])
    summary = {"total": len(items), "successful": successful, "failed": len(items) - successful}
    return JSONResponse({**summary, "results": results})


routes = [
    Route("/api/publish", publish, methods=["POST"]),
    Route("/api/publish/batch", publish_batch, methods=["POST"]),
]
