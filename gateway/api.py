"""The gateway's publish API (API key). Refusals are `ApiError`s, rendered by
shared/http_errors.py; health, readiness and metrics are shared/http_ops.py's."""

from __future__ import annotations

from typing import Any

from archmesh_client.publisher import InvalidPublication, Publisher
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.metrics import GatewayMetrics
from shared.broker import BrokerError
from shared.http_api import json_body, require_api_key
from shared.http_errors import ApiError, unavailable
from shared.settings import Settings


class PublishApi:
    """`POST /api/publish` and `/api/publish/batch`, over the node's publisher."""

    def __init__(self, publisher: Publisher, settings: Settings, metrics: GatewayMetrics) -> None:
        self._publisher = publisher
        self._settings = settings
        self._metrics = metrics

    @property
    def routes(self) -> list[Route]:
        return [
            Route("/api/publish", self.publish, methods=["POST"]),
            Route("/api/publish/batch", self.publish_batch, methods=["POST"]),
        ]

    async def _publish_one(self, item: Any) -> dict[str, Any]:
        if not isinstance(item, dict) or set(item) - {"channel", "data"} or "channel" not in item:
            raise ApiError(422, "bad_request", 'expected an object {"channel": ..., "data": {...}}')
        try:
            position = await self._publisher.publish(item["channel"], item.get("data"))  # type: ignore[arg-type]
        except InvalidPublication as exc:
            raise ApiError(422, exc.code, str(exc)) from None
        except BrokerError as exc:
            raise unavailable(exc) from exc
        self._metrics.published.inc()
        return {"channel": item["channel"], "offset": position.offset, "epoch": position.epoch}

    async def publish(self, request: Request) -> Response:
        settings = self._settings
        require_api_key(request, settings.api_key)
        body = await json_body(request, settings.max_publish_bytes + 1024)
        return JSONResponse(await self._publish_one(body))

    async def publish_batch(self, request: Request) -> Response:
        settings = self._settings
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
                results.append({"index": index, "ok": True, **await self._publish_one(item)})
            except ApiError as exc:
                results.append({"index": index, "ok": False, "error": exc.body()})
        successful = sum(1 for r in results if r["ok"])
        summary = {"total": len(items), "successful": successful, "failed": len(items) - successful}
        return JSONResponse({**summary, "results": results})
