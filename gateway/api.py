"""The gateway's publish API (API key). Refusals are `ApiError`s, rendered by
shared/http_errors.py; health, readiness and metrics are shared/http_ops.py's.

A publish may carry an idempotency key (the `Idempotency-Key` header, or `idempotency_key`
beside `channel` and `data`, per item in a batch): a retry of it answers the first
publication's position with `"duplicate": true` and publishes nothing."""

from __future__ import annotations

from typing import Any

from archmesh_client.idempotency import IdempotencyConflict
from archmesh_client.publisher import InvalidPublication, Publisher
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api_models import BatchItem, BatchPublished, PublishBatch, Published, PublishItem
from gateway.metrics import GatewayMetrics
from shared.broker import BrokerError
from shared.http_api import json_body, require_api_key
from shared.http_errors import ApiError, unavailable
from shared.openapi import operation
from shared.settings import Settings

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

    async def _publish_one(self, body: Any, header_key: str | None = None) -> Published:
        item = _item(body)
        given = "idempotency_key" in item.model_fields_set
        key = item.idempotency_key if given else header_key
        if given and header_key is not None and key != header_key:
            raise ApiError(422, "bad_request", f"the {HEADER} header and idempotency_key differ")
        if given and key is None:
            raise ApiError(422, "invalid_idempotency_key", "idempotency_key must be a string")
        try:
            position = await self._publisher.publish(item.channel, item.data, key)
        except InvalidPublication as exc:
            raise ApiError(422, exc.code, str(exc)) from None
        except IdempotencyConflict as exc:
            raise ApiError(409, exc.code, str(exc)) from None
        except BrokerError as exc:
            raise unavailable(exc) from exc
        reply = Published(channel=item.channel, offset=position.offset, epoch=position.epoch)
        if key is not None:
            reply.duplicate = position.duplicate
        if not position.duplicate:
            self._metrics.published.inc()
        return reply

    @operation(
        "Publish one event on a channel",
        body=PublishItem,
        response=Published,
        errors=(409,),
        tag="publish",
    )
    async def publish(self, request: Request) -> Response:
        settings = self._settings
        require_api_key(request, settings.api_key)
        body = await json_body(request, settings.max_publish_bytes + 1024)
        return _json(await self._publish_one(body, request.headers.get(HEADER)))

    @operation(
        "Publish several events, each item answered on its own",
        body=PublishBatch,
        response=BatchPublished,
        tag="publish",
    )
    async def publish_batch(self, request: Request) -> Response:
        settings = self._settings
        require_api_key(request, settings.api_key)
        if HEADER in request.headers:
            message = f'a batch takes no {HEADER} header: give each item its "idempotency_key"'
            raise ApiError(422, "bad_request", message)
        limit = settings.max_batch_items
        body = await json_body(request, (settings.max_publish_bytes + 1024) * min(limit, 64))
        try:
            items = PublishBatch.model_validate({"items": body} if isinstance(body, list) else body)
        except ValidationError:
            raise ApiError(
                422, "bad_request", 'expected a non-empty list (or {"items": [...]})'
            ) from None
        if len(items.items) > limit:
            raise ApiError(413, "too_many_items", f"at most {limit} items per batch")
        results = []
        for index, item in enumerate(items.items):
            try:
                published = await self._publish_one(item)
            except ApiError as exc:
                results.append(BatchItem(index=index, ok=False, error=exc.body()))
            else:
                results.append(BatchItem(index=index, ok=True, **published.model_dump()))
        successful = sum(1 for r in results if r.ok)
        reply = BatchPublished(
            total=len(results),
            successful=successful,
            failed=len(results) - successful,
            results=results,
        )
        return _json(reply)


def _json(model: BaseModel) -> Response:
    """The answer built from its model; fields that do not apply (None) left out."""
    return JSONResponse(model.model_dump(mode="json", exclude_none=True))


def _item(body: Any) -> PublishItem:
    try:
        return PublishItem.model_validate(body)
    except ValidationError as exc:
        where = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
        if "idempotency_key" in where:
            raise ApiError(
                422, "invalid_idempotency_key", "idempotency_key must be a string"
            ) from None
        if where == {"channel"} and isinstance(body, dict) and "channel" in body:
            raise ApiError(422, "invalid_channel", "channel must be a string") from None
        raise ApiError(
            422,
            "bad_request",
            'expected an object {"channel": ..., "data": {...}, "idempotency_key"?: ...}',
        ) from None
