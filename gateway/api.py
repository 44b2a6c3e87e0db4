"""HTTP endpoints: publish API (API key), health, readiness, metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.broker import BrokerError
from shared.http_api import ApiError, error_response, json_body, require_api_key
from shared.publisher import InvalidPublication

if TYPE_CHECKING:
    from gateway.app import Gateway


_error = error_response


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _check_key(request: Request, gateway: Gateway) -> None:
    require_api_key(request, gateway.settings.api_key)


_json_body = json_body


async def _publish_one(gateway: Gateway, item: Any) -> dict[str, Any]:
    if not isinstance(item, dict) or set(item) - {"channel", "data"} or "channel" not in item:
        raise InvalidPublication(
            "bad_request", 'expected an object {"channel": ..., "data": {...}}'
        )
    position = await gateway.publisher.publish(item["channel"], item.get("data"))  # type: ignore[arg-type]
    gateway.metrics.published.inc()
    return {"channel": item["channel"], "offset": position.offset, "epoch": position.epoch}


async def publish(request: Request) -> Response:
    gateway = _gateway(request)
    try:
        _check_key(request, gateway)
        body = await _json_body(request, gateway.settings.max_publish_bytes + 1024)
        return JSONResponse(await _publish_one(gateway, body))
    except ApiError as exc:
        return exc.response
    except InvalidPublication as exc:
        return _error(422, exc.code, str(exc))
    except BrokerError as exc:
        return _error(503, "unavailable", str(exc))


async def publish_batch(request: Request) -> Response:
    gateway = _gateway(request)
    settings = gateway.settings
    try:
        _check_key(request, gateway)
        limit = settings.max_batch_items
        body = await _json_body(request, (settings.max_publish_bytes + 1024) * min(limit, 64))
    except ApiError as exc:
        return exc.response
    items = body.get("items") if isinstance(body, dict) else body
    if not isinstance(items, list) or not items:
        return _error(422, "bad_request", 'expected a non-empty list (or {"items": [...]})')
    if len(items) > limit:
        return _error(413, "too_many_items", f"at most {limit} items per batch")
    results = []
    for index, item in enumerate(items):
        try:
            results.append({"index": index, "ok": True, **await _publish_one(gateway, item)})
        except InvalidPublication as exc:
            results.append(
                {"index": index, "ok": False, "error": {"code": exc.code, "message": str(exc)}}
            )
        except BrokerError as exc:
            results.append(
                {"index": index, "ok": False, "error": {"code": "unavailable", "message": str(exc)}}
            )
    successful = sum(1 for r in results if r["ok"])
    summary = {"total": len(items), "successful": successful, "failed": len(items) - successful}
    return JSONResponse({**summary, "results": results})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok", "node": _gateway(request).node})


async def readyz(request: Request) -> Response:
    gateway = _gateway(request)
    broker_ok = gateway.broker.connected
    ready = broker_ok and not gateway.draining
    body = {"ready": ready, "broker": broker_ok, "draining": gateway.draining, "node": gateway.node}
    return JSONResponse(body, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    return Response(_gateway(request).metrics.render(), media_type="text/plain; version=0.0.4")


routes = [
    Route("/api/publish", publish, methods=["POST"]),
    Route("/api/publish/batch", publish_batch, methods=["POST"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
