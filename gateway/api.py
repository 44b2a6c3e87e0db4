"""The gateway's publish API (API key). Refusals are `ApiError`s, rendered by
shared/http_errors.py; health, readiness and metrics are shared/http_ops.py's.

A publish may carry an idempotency key (the `Idempotency-Key` header, or `idempotency_key`
beside `channel` and `data`, per item in a batch): a retry of it answers the first
publication's position with `"duplicate": true` and publishes nothing."""

from __future__ import annotations

from typing import Any

from archmesh_client.idempotency import IdempotencyConflict
from archmesh_client.publisher import InvalidPublication, Publisher
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.metrics import GatewayMetrics
from shared.broker import BrokerError
from shared.http_api import json_body, require_api_key
from shared.http_errors import ApiError, unavailable
from shared.settings import Settings

_ITEM = {"channel", "data", "idempotency_key"}
HEADER = "Idempotency-Key"


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

    async def _publish_one(self, item: Any, header_key: str | None = None) -> dict[str, Any]:
        if not isinstance(item, dict) or set(item) - _ITEM or "channel" not in item:
            raise ApiError(
                422,
                "bad_request",
                'expected an object {"channel": ..., "data": {...}, "idempotency_key"?: ...}',
            )
        key = item.get("idempotency_key", header_key)
        if "idempotency_key" in item and header_key is not None and key != header_key:
            raise ApiError(422, "bad_request", f"the {HEADER} header and idempotency_key differ")
        if "idempotency_key" in item and key is None:
            raise ApiError(422, "invalid_idempotency_key", "idempotency_key must be a string")
        try:
            position = await self._publisher.publish(item["channel"], item.get("data"), key)  # type: ignore[arg-type]
        except InvalidPublication as exc:
            raise ApiError(422, exc.code, str(exc)) from None
        except IdempotencyConflict as exc:
            raise ApiError(409, exc.code, str(exc)) from None
        except BrokerError as exc:
            raise unavailable(exc) from exc
        reply: dict[str, Any] = {
            "channel": item["channel"],
            "offset": position.offset,
            "epoch": position.epoch,
        }
        if key is not None:
            reply["duplicate"] = position.duplicate
        if not position.duplicate:
            self._metrics.published.inc()
        return reply

    async def publish(self, request: Request) -> Response:
        settings = self._settings
        require_api_key(request, settings.api_key)
        body = await json_body(request, settings.max_publish_bytes + 1024)
        return JSONResponse(await self._publish_one(body, request.headers.get(HEADER)))

    async def publish_batch(self, request: Request) -> Response:
        settings = self._settings
        require_api_key(request, settings.api_key)
        if HEADER in request.headers:
            message = f'a batch takes no {HEADER} header: give each item its "idempotency_key"'
            raise ApiError(422, "bad_request", message)
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
