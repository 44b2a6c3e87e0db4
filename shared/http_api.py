"""What the gateway's and the notifier's HTTP APIs share about requests: bounded JSON bodies and
API-key checks. They refuse with `ApiError` (shared/http_errors.py renders it)."""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from pydantic import SecretStr
from starlette.requests import Request

from shared.http_errors import ApiError


def bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def is_api_key(given: str | None, key: SecretStr | None) -> bool:
    return (
        given is not None
        and key is not None
        and hmac.compare_digest(given.encode(), key.get_secret_value().encode())
    )


def require_api_key(request: Request, key: SecretStr | None) -> None:
    if key is None:
        raise ApiError(503, "api_disabled", "set ARCHMESH_API_KEY to enable this API")
    if not is_api_key(bearer(request), key):
        message = "missing or wrong API key (Authorization: Bearer <key>)"
        raise ApiError(401, "unauthorized", message)


async def json_body(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"body exceeds {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "too_large", f"body exceeds {limit} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from None
