"""`GET /api/channels/{channel}/history` (API key): the `history` frame's page for a backend,
`?limit=&since_offset=&since_epoch=&reverse=`. Refusals are `ApiError`s (shared/http_errors)."""

from __future__ import annotations

import orjson
from archmesh_client.channels import InvalidChannel, validate_channel
from archmesh_client.stream import StreamPosition
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api_models import HistoryPage
from gateway.context import HistoryRead
from gateway.history import history_page, page_fields
from shared.broker import BrokerError
from shared.http_api import require_api_key
from shared.http_errors import ApiError, unavailable
from shared.openapi import Param, operation
from shared.settings import Settings

_PARAMS = {"limit", "since_offset", "since_epoch", "reverse"}


class HistoryApi:
    def __init__(self, history: HistoryRead, settings: Settings) -> None:
        self._history = history
        self._settings = settings

    @property
    def routes(self) -> list[Route]:
        return [Route("/api/channels/{channel}/history", self.history, methods=["GET"])]

    @operation(
        "A page of a channel's history and its position",
        response=HistoryPage,
        path={"channel": "e.g. session:abc (URL-encoded)"},
        query=(
            Param("limit", "at most this many publications (capped by the server)", "integer"),
            Param("since_offset", "publications after this offset (with since_epoch)", "integer"),
            Param("since_epoch", "the epoch since_offset belongs to"),
            Param("reverse", "newest first", "boolean"),
        ),
        tag="history",
    )
    async def history(self, request: Request) -> Response:
        settings = self._settings
        require_api_key(request, settings.api_key)
        try:
            channel = validate_channel(request.path_params["channel"])
        except InvalidChannel as exc:
            raise ApiError(422, "invalid_channel", str(exc)) from None
        query = request.query_params
        unknown = set(query) - _PARAMS
        if unknown:
            raise ApiError(422, "bad_request", f"unknown parameters: {sorted(unknown)}")
        limit = _count(query.get("limit", str(settings.history_max_limit)), "limit")
        since = None
        if "since_offset" in query or "since_epoch" in query:
            if "since_offset" not in query or "since_epoch" not in query:
                raise ApiError(422, "bad_request", "give since_offset and since_epoch together")
            epoch = query["since_epoch"]
            if len(epoch) > 64:
                raise ApiError(422, "bad_request", "since_epoch: at most 64 characters")
            since = StreamPosition(_count(query["since_offset"], "since_offset"), epoch)
        reverse = query.get("reverse", "false").lower()
        if reverse not in ("true", "false", "1", "0"):
            raise ApiError(422, "bad_request", "reverse: true or false")
        try:
            page = await history_page(
                self._history,
                channel,
                limit,
                since,
                reverse in ("true", "1"),
                settings.history_max_limit,
            )
        except BrokerError as exc:
            raise unavailable(exc) from exc
        # Built without the model: each publication's data is embedded as the JSON text it was
        # published as (no parse, no re-encode); tests/test_openapi.py checks it against it.
        return Response(orjson.dumps(page_fields(channel, page)), media_type="application/json")


def _count(text: str, name: str) -> int:
    if not text.isdigit() or len(text) > 15:
        raise ApiError(422, "bad_request", f"{name}: a whole number >= 0")
    return int(text)
